"""The client handles of the resources: each is (client, name) and typed."""
