"""``vmcluster token``: the cluster's API tokens (admin or read-only), through its API."""

from __future__ import annotations

import secrets
import time

import click

from vmcluster.cli.apiclient import api_request, resolve_access
from vmcluster.cli.cluster import cluster_option
from vmcluster.cli.common import console, emit_json, json_option

__all__ = ["token"]


@click.group()
def token() -> None:
    """API tokens: who may use the cluster's API, as admin or read-only."""


@token.command("create")
@click.argument("name", required=False)
@click.option("--role", type=click.Choice(["admin", "read-only"]), default="read-only",
              show_default=True, help="admin: everything; read-only: every read but tokens.")
@cluster_option
@json_option
def create(name: str | None, role: str, cluster_url: str | None, lab_name: str | None,
           as_json: bool) -> None:
    """A new token named NAME (default: its role and a random suffix); its secret is
    printed this once (the cluster keeps only its hash). The audit trail names it."""
    name = name or f"{role}-{secrets.token_hex(3)}"
    got = api_request(resolve_access(cluster_url, lab_name), "POST", "/api/v1/tokens",
                      {"name": name, "role": role})
    if as_json:
        emit_json(got)
        return
    console.print(f"token {got['name']} ({got['role']}); keep it, it is not shown again:\n"
                  f"  {got['token']}", soft_wrap=True)


@token.command("list")
@cluster_option
@json_option
def list_(cluster_url: str | None, lab_name: str | None, as_json: bool) -> None:
    """The cluster's tokens: name, role, made when and by whom."""
    got = api_request(resolve_access(cluster_url, lab_name), "GET", "/api/v1/tokens")
    if as_json:
        emit_json(got)
        return
    for t in got["tokens"]:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(t["at"])))
        console.print(f"{t['name']:<20} {t['role']:<10} made {made} by {t['by'] or '-'}")


@token.command("revoke")
@click.argument("name")
@cluster_option
@json_option
def revoke(name: str, cluster_url: str | None, lab_name: str | None, as_json: bool) -> None:
    """Revoke the token named NAME: every host refuses it at once."""
    got = api_request(resolve_access(cluster_url, lab_name), "DELETE",
                      f"/api/v1/tokens/{name}")
    if as_json:
        emit_json(got)
        return
    console.print(f"token {got['name']} revoked")
