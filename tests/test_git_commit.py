"""``commit_paths`` (the ``--commit`` of the evidence run and the equal-effort sweep): it commits the given paths
alone and leaves whatever else is staged or edited as it was."""

from __future__ import annotations

import subprocess

from trl_safedistill.experiments.git_commit import commit_paths


def git(repo, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_commits_only_the_given_paths_and_keeps_other_staged_work(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "base.txt").write_text("base\n")
    git(repo, "add", "base.txt")
    git(repo, "commit", "-qm", "base")
    (repo / "staged.txt").write_text("someone's work in progress\n")
    git(repo, "add", "staged.txt")
    (repo / "base.txt").write_text("edited, not staged\n")
    unit = repo / "results" / "seed0" / "standard"
    unit.mkdir(parents=True)
    (unit / "unit.json").write_text("{}\n")
    assert commit_paths([unit], "evidence: seed 0 standard")
    assert git(repo, "log", "-1", "--format=%s").strip() == "evidence: seed 0 standard"
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["results/seed0/standard/unit.json"]
    status = git(repo, "status", "--porcelain").splitlines()
    assert "A  staged.txt" in status and " M base.txt" in status


def test_a_failed_commit_is_reported_not_raised(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    missing = repo / "not-there.json"  # git add fails on a path that does not exist
    assert commit_paths([missing], "nothing", tries=1) is False
    assert "could not commit" in capsys.readouterr().err
