"""HTTP routers, one per concern; each handler is a few lines over the pipeline and the model manager."""
