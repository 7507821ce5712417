"""Everything that talks to MLflow: the one writer of a search's runs, the readers, the store.

``load_search(name, tracking_uri)`` gives a search as a table (one row per trial) for
:mod:`hyperlab.analysis`; ``load_search_meta`` its parent run.
"""

from hyperlab.tracking.searches import load_search, load_search_meta, objectives_of

__all__ = ["load_search", "load_search_meta", "objectives_of"]
