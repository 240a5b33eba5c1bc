"""Sandbox intent (portable policy), its resolution on this host, and denial reports."""
