"""Importers: public preference datasets -> rewarddance shards.

One module per dataset format, each documenting the conventions it applies::

    from rewarddance.data.importers import import_dataset

    report = import_dataset("pickapic", "pickapic_v2/data", "shards/pickapic/test", split="test")
    print(report.summary())

From the command line: ``python -m rewarddance data import --format pickapic --input PATH --out DIR``.
"""

from rewarddance.data.importers.common import (
    DatasetImportError,
    Importer,
    ImportOptions,
    ImportReport,
    Record,
    RowError,
    SkipRow,
)
from rewarddance.data.importers.registry import IMPORTERS, Format, get_importer, import_dataset

__all__ = [
    "IMPORTERS",
    "DatasetImportError",
    "Format",
    "ImportOptions",
    "ImportReport",
    "Importer",
    "Record",
    "RowError",
    "SkipRow",
    "get_importer",
    "import_dataset",
]
