"""Thin DVC stage scripts: parse arguments, load the typed config, call into ``dsts``, write outputs."""
