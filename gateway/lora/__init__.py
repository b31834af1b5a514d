"""llama-server's LoRA adapter routes: GET and POST /lora-adapters."""
