"""HTTP serving of action classifiers: ``llamafactory-cli api`` with ``stage: action_cls`` (see app.py)."""
