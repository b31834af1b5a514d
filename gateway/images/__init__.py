"""Images in requests: where the gateway takes their bytes from, and what it never does.

- ``data:image/...;base64,`` URLs (and llama-server's bare base64 ``multimodal_data``) are
  decoded strictly (policy.py).
- ``http(s)://`` URLs are never fetched unless the operator lists the host
  (``--image-fetch-allow-hosts``); even then, an address that is loopback, link-local, private,
  multicast, reserved or unspecified is never connected to, and the connection goes to the very
  address that was checked (fetch.py, addresses.py).
- ``file://`` URLs are read only from the operator's ``--image-file-dir`` (files.py).
- Count and bytes per image are capped before any worker sees them; the worker checks the rest
  (the format, the pixels) once (loader.py).
"""
