"""The dataset check behind `rcic check`, as a library function."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rcic.data import images, metadata, rules


@dataclass
class CheckReport:
    summary: str  # one line: wells, sites, experiments, cell types
    findings: list  # rules.Finding: each plate rule, ok or not, with its evidence
    image_problems: list[str] = field(default_factory=list)  # one line per bad or missing PNG
    sites_opened: int = 0  # 0 when images were not opened

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings) and not self.image_problems


def check_dataset(
    data: str | Path,
    *,
    open_images: bool = False,
    workers: int | None = None,
    label_map=None,
    reference=None,
) -> CheckReport:
    """Read the metadata (raising MetadataError on a bad table), check the plate rules and, with
    `open_images`, open every PNG of every site."""
    sites = metadata.load_metadata(data, label_map=label_map, reference=reference)
    wells = metadata.wells_of(sites)
    summary = (
        f"{data}: {len(wells)} wells, {len(sites)} sites, {wells['experiment'].nunique()} "
        f"experiments ({', '.join(sorted(wells['cell_type'].unique()))})"
    )
    report = CheckReport(summary, rules.check_rules(wells))
    if open_images:
        keys = list(
            sites[["split", "experiment", "plate", "well", "site"]].itertuples(
                index=False, name=None
            )
        )
        report.image_problems = images.scan_sites(
            data, keys, workers=workers or os.cpu_count() or 1
        )
        report.sites_opened = len(keys)
    return report
