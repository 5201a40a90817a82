"""The operator's side of gantryd: the admin socket (both ends), metrics, the services wiring."""
