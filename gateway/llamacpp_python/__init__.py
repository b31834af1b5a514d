"""llama-cpp-python server's routes: /extras/tokenize, /extras/tokenize/count,
/extras/detokenize and GitHub Copilot's /v1/engines/copilot-codex/completions."""
