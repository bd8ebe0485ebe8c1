"""Shared test helpers: start a real ``mailwarden run`` process and talk to it over sockets."""
