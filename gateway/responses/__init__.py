"""OpenAI's Responses API (``/v1/responses``), on the gateway's sessions: router.py has the
routes, schemas.py the bodies, translate.py the requests and ids, render.py the response objects
and stream events, store.py the bounded store that ``GET`` reads."""
