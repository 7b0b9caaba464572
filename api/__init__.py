"""The HTTP trigger of codeindex (FastAPI): app.py the routes, auth.py tokens, webhooks.py signatures."""
