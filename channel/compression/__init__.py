"""Per-app compression on the gateway: the registry of dictionaries and presets, their
delivery to devices, body sampling and retraining (see ``service.py``)."""
