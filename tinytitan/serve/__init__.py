"""Using a specialist: the OpenAI-compatible server and its fleet, chat, generate."""
