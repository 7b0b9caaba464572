"""The domain of codeindex, free of Celery: change sources, scanning, chunking, ids,
embedders, vector stores, state. Tasks call into it; tests call it directly."""
