"""Annotation-format readers, one module per dataset; shared logic in `validate`.

Use `common.data.registry.load_dataset` rather than these modules directly.
"""
