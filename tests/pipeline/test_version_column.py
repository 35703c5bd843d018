"""`version_column`: results say which model version scored them."""

from __future__ import annotations

import numpy as np

from modelport import Registry, Settings
from modelport.dataplane import DataPlane, ModelConfig
from modelport.flavors.factors import FactorModel
from modelport.pipeline import Frame, MemoryWriter, Pipeline


def tiny_model() -> FactorModel:
    return FactorModel(np.eye(3, dtype=np.float32), ["a", "b", "c"], np.array([3, 2, 1]),
                       top_k=2)


async def test_each_row_carries_the_version_that_scored_it(settings: Settings) -> None:
    reg = Registry(settings=settings)
    sample = {"history": np.array([["a", ""]], dtype=object)}
    for _ in range(2):
        mv = reg.register("recs", tiny_model(), sample_input=sample)
    reg.set_alias("recs", "production", mv.version)
    dp = DataPlane(reg, settings, [ModelConfig(ref="recs@production")])
    await dp.start(follow=False)
    writer = MemoryWriter()
    pipe = Pipeline("recs", "recs", dp, writer=writer, version_column="model_version")
    try:
        frame = Frame(["u1", "u2"], {"history": np.array([["a", ""], ["", ""]], dtype=object)})
        scored = await pipe.score(frame)
        await pipe.write(scored)
    finally:
        await dp.stop()
    assert scored.results.columns["model_version"].tolist() == [2, 2]
    assert writer.rows["u1"]["model_version"] == 2
