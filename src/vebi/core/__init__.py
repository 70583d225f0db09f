"""The one pass and the fit: features, responses, streaming statistics, collection, mu-LASSO, relevance."""
