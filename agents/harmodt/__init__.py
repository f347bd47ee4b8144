"""HarmoDT: per-task harmony masks over the transformer-block weights (see ``masks``)."""
