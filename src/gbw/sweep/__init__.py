"""Many runs, one table: ``gbw sweep`` (grids x seeds as run folders, resumable, several at
once), its seed-paired report (``gbw report --sweep``) and ``gbw study`` (the paper's analysis
on MiniCity). See :mod:`gbw.sweep.plan`, :mod:`gbw.sweep.runner`, :mod:`gbw.sweep.report`
and :mod:`gbw.sweep.study`."""
