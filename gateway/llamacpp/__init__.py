"""llama-server's native API surface: /completion, /tokenize, /detokenize, /apply-template,
/embedding(s) and /props (router), with its error shape (errors) and ``llamacpp:`` metrics."""
