"""HTTP controllers: thin handlers that parse requests, call the services and shape responses."""
