"""Readers of foreign checkpoint formats -> (ModelArgs, name -> array), and the converter."""
