"""serve.py's work: the HTTP service (FastAPI + uvicorn) and its page, on predict.py's label scoring."""
