"""The modelport reference system: a music recommender made of modelport services."""
