"""llama-server's slot routes: GET /slots, and POST /slots/{id_slot}?action=save|restore|erase."""
