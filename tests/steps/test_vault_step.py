"""The `vault.credentials` step: dynamic credentials as placeholders, tracked leases, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from runbot.domain import RunStatus
from runbot.engine.state import APPROVALS
from runbot.runbooks.loader import parse_source
from runbot.runbooks.templating import secret_placeholder
from runbot.secrets.leases import lease_rows
from runbot.settings import Settings
from runbot.steps.registry import StepRegistry
from runbot.steps.vault import VaultCredentialsParams
from tests.conftest import write_runbook
from tests.engine.helpers import drive, start, steps
from tests.secrets.helpers import vault_settings, wait_until
from tests.support.openbao import OpenBao, PgDatabase

pytest_plugins = ["tests.support.openbao_fixtures"]


class TestParams:
    def test_a_credentials_path_is_accepted_without_slashes_around_it(self) -> None:
        assert VaultCredentialsParams(path="/database/creds/readonly/").path == "database/creds/readonly"

    @pytest.mark.parametrize("path", ["kv/app", "sys/leases/lookup", "database", "database/../sys/x", "a b/c"])
    def test_static_system_and_malformed_paths_are_refused(self, path: str) -> None:
        with pytest.raises(ValidationError):
            VaultCredentialsParams(path=path)

    def test_lint_reports_a_kv_path_with_its_line(self, tmp_path: Path) -> None:
        source = "name: x\nsteps:\n  - id: db\n    type: vault.credentials\n    with: {path: kv/app}\n"
        book, problems = parse_source(source, "x.yaml", StepRegistry(Settings(data_dir=tmp_path)))
        assert book is None
        assert [str(p) for p in problems] == [
            "x.yaml:5: steps[0].with.path: Value error, static secrets are read with secret('kv/PATH#KEY'), "
            "not with vault.credentials"]  # fmt: skip


def test_without_vault_the_step_says_what_to_configure(make_runtime: Any, runbooks_dir: Path) -> None:
    write_runbook(runbooks_dir, "creds", "name: creds\nsteps:\n  - {id: db, type: vault.credentials, with: {path: database/creds/ro}}\n")
    rt = make_runtime()  # the env provider
    run_id = start(rt, "creds")
    assert drive(rt, run_id) is RunStatus.FAILED
    assert steps(rt, run_id)[0]["error"] == ("vault.credentials needs Vault: set RUNBOT_SECRETS_PROVIDER=vault and "
                                             "RUNBOT_VAULT_ADDR")  # fmt: skip


@pytest.mark.integration
class TestWithVault:
    def test_output_holds_lease_facts_and_placeholders_never_values(
            self, bao_db: OpenBao, vault_pg: PgDatabase, make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
        creds = bao_db.db_role(vault_pg, "step-ro", default_ttl="90s")
        write_runbook(runbooks_dir, "creds", f"""
            name: creds
            steps:
              - {{id: db, type: vault.credentials, with: {{path: {creds}}}}}
              - {{id: echo, type: log, with: {{message: "user {{{{ steps.db.username }}}} pw {{{{ steps.db.data.password }}}}"}}}}
            """)  # fmt: skip
        rt = make_runtime(**vault_settings(bao_db))
        run_id = start(rt, "creds")
        assert drive(rt, run_id) is RunStatus.SUCCEEDED
        db, echo = steps(rt, run_id)
        out = db["output"]
        lease_id = out["lease_id"]
        assert lease_id.startswith(f"{creds}/")
        assert (out["path"], out["ttl"], out["renewable"], out["keys"]) == (creds, 90, True, ["password", "username"])
        assert out["username"] == out["data"]["username"] == secret_placeholder(f"lease:{lease_id}#username")
        assert out["data"]["password"] == secret_placeholder(f"lease:{lease_id}#password")
        assert db["summary"] == f"lease {lease_id} (90s, renewed while the run lives)"
        assert echo["output"]["message"] == "user **** pw ****", "resolved at the last moment, then redacted"
        assert echo["inputs"]["secrets"] == [f"lease:{lease_id}#password", f"lease:{lease_id}#username"]
        wait_until(lambda: lease_rows(rt.db, run_id)[0]["revoked_at"])

    def test_a_request_body_issues_for_engines_that_take_one(self, bao: OpenBao, make_runtime: Any,
                                                             runbooks_dir: Path) -> None:  # fmt: skip
        bao.enable("pki", "pki", config={"max_lease_ttl": "1h"})
        bao.api("POST", "pki/root/generate/internal", {"common_name": "runbot test CA", "ttl": "1h"})
        bao.api("POST", "pki/roles/web", {"allow_any_name": True, "generate_lease": True, "ttl": "10m"})
        write_runbook(runbooks_dir, "cert", """
            name: cert
            steps:
              - {id: cert, type: vault.credentials, with: {path: pki/issue/web, data: {common_name: web.runbot.test}}}
            """)  # fmt: skip
        rt = make_runtime(**vault_settings(bao, vault_token=bao.root_token))
        run_id = start(rt, "cert")
        assert drive(rt, run_id) is RunStatus.SUCCEEDED
        out = steps(rt, run_id)[0]["output"]
        assert {"certificate", "private_key", "serial_number"} <= set(out["keys"])
        assert "PRIVATE KEY" not in json.dumps(out)
        [lease] = wait_until(lambda: [r for r in lease_rows(rt.db, run_id) if r["revoked_at"]])
        assert lease["path"] == "pki/issue/web" and not bao.lease_exists(lease["lease_id"])

    def test_a_refused_path_fails_the_step_without_retrying(self, bao_db: OpenBao, vault_pg: PgDatabase,
                                                            make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
        creds = bao_db.db_role(vault_pg, "not-granted")
        bao_db.policy("kv-only", 'path "kv/data/*" { capabilities = ["read"] }')
        write_runbook(runbooks_dir, "creds", f"""
            name: creds
            steps:
              - id: db
                type: vault.credentials
                with: {{path: {creds}}}
                retry: {{attempts: 3, initial: 100ms}}
            """)  # fmt: skip
        rt = make_runtime(**vault_settings(bao_db, vault_token=bao_db.token(policies=["kv-only"])))
        run_id = start(rt, "creds")
        assert drive(rt, run_id) is RunStatus.FAILED
        [only] = steps(rt, run_id)
        assert only["error"] == f"vault.credentials {creds}: permission denied by Vault policy (403)"
        assert lease_rows(rt.db, run_id) == []

    def test_an_approval_request_names_the_secrets_a_remediation_will_use_by_path_only(
            self, bao_db: OpenBao, vault_pg: PgDatabase, make_runtime: Any, runbooks_dir: Path) -> None:  # fmt: skip
        creds = bao_db.db_role(vault_pg, "approval-ro")
        bao_db.put_kv("kv", "deployer", {"token": "deployer-token-value"})
        write_runbook(runbooks_dir, "fix", f"""
            name: fix
            steps:
              - {{id: db, type: vault.credentials, with: {{path: {creds}}}}}
              - id: restart
                type: log
                risk: high
                approval: {{approvers: {{slack_users: [U1]}}}}
                with:
                  message: "token {{{{ secret('kv/deployer#token') }}}} as {{{{ steps.db.username }}}}"
            """)  # fmt: skip
        rt = make_runtime(**vault_settings(bao_db))
        run_id = start(rt, "fix")
        assert drive(rt, run_id) is RunStatus.WAITING
        with rt.db.read() as conn:
            policy = conn.execute(select(APPROVALS.c.policy).where(APPROVALS.c.run_id == run_id)).scalar_one()
        lease_id = lease_rows(rt.db, run_id)[0]["lease_id"]
        assert policy["secrets"] == ["kv/deployer#token", f"lease:{lease_id}#username"]
        assert policy["params"]["message"] == f"token ****(kv/deployer#token) as ****(lease:{lease_id}#username)"
        assert "deployer-token-value" not in json.dumps(policy)
        rt.engine.cancel(run_id, "cli:tester")
