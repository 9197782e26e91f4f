"""What the README names is what the code location has."""

import re
from pathlib import Path

from cah_assets.definitions import defs

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_readmes_job_list_is_the_code_locations_jobs():
    sentence = README[README.index("Jobs: ") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`(\w+)`", sentence)) - {"pages"}  # pages: an asset the sentence mentions
    jobs = {job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}  # Dagster's own
    assert named == jobs
