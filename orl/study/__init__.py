"""Studies: experiment grids as data, run and resumed by ``orl study``, recorded in a results
store, reported with rliable (see ``docs/studies.md``)."""

from orl.study.spec import RunSpec, Study, StudyError, load_study
from orl.study.store import ResultsStore

__all__ = ["ResultsStore", "RunSpec", "Study", "StudyError", "load_study"]
