"""The permission grammar, matching, and the rule that one grants only what one holds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.auth.actor import Actor, refuse
from app.auth.dependencies import require, required_permission
from app.auth.permissions import (
    Permission,
    Scoped,
    UnknownPermission,
    act_as,
    ensure_may_grant,
    is_valid_permission,
    permission_matches,
    secret_connect,
    secret_read,
    secret_update_from_service,
    secret_use,
    service_run,
    validate_permissions,
)
from app.errors import InvalidInput, NotAuthenticated, PermissionDenied


def actor(*permissions: str) -> Actor:
    """A service account holding `permissions`."""
    return Actor(kind="service_account", name="test", permissions=frozenset(permissions))


class TestNames:
    def test_the_plain_permissions_are_those_of_the_design(self) -> None:
        assert {p.value for p in Permission} == {
            "secrets.manage",
            "services.manage",
            "schedules.manage",
            "runs.read",
            "accounts.manage",
            "settings.manage",
            "providers.manage",
            "webhooks.manage",
            "metrics.read",
        }
        assert all(is_valid_permission(p) for p in Permission)

    @pytest.mark.parametrize(
        ("built", "expected"),
        [
            (secret_read("ACCESS_TOKEN"), "secrets.read:ACCESS_TOKEN"),
            (
                secret_update_from_service("ACCESS_TOKEN"),
                "secrets.update_from_service:ACCESS_TOKEN",
            ),
            (secret_use("CLIENT_SECRET"), "secrets.use:CLIENT_SECRET"),
            (secret_connect("GITHUB"), "secrets.connect:GITHUB"),
            (service_run("oauth"), "services.run:oauth"),
            (service_run("oauth", "refresh-token"), "services.run:oauth/refresh-token"),
            (act_as("ci-deployer"), "act_as:ci-deployer"),
        ],
    )
    def test_a_scoped_permission_is_built_from_what_it_names(
        self, built: str, expected: str
    ) -> None:
        assert built == expected and type(built) is str
        assert is_valid_permission(built)

    def test_every_scope_has_a_naming_rule(self) -> None:
        for scope in Scoped:
            assert is_valid_permission(f"{scope.prefix}*")
            assert not is_valid_permission(f"{scope.prefix}has space")

    def test_a_refusal_names_a_plain_permission_by_its_name(self) -> None:
        with pytest.raises(PermissionDenied) as denied:
            refuse(actor(), Permission.RUNS_READ)
        assert denied.value.message == "this needs the permission 'runs.read'"
        assert denied.value.extra["permission"] == "runs.read"
        assert type(denied.value.extra["permission"]) is str
        anonymous = Actor(kind="anonymous", name="anonymous", permissions=frozenset())
        with pytest.raises(NotAuthenticated, match=r"this needs the permission 'runs\.read'$"):
            refuse(anonymous, Permission.RUNS_READ)


class TestRequire:
    def test_a_typo_is_refused_naming_it_and_the_known_permissions(self) -> None:
        with pytest.raises(UnknownPermission) as caught:
            require("runs.raed")  # type: ignore[arg-type]
        message = str(caught.value)
        assert message.startswith("'runs.raed' is not a permission (did you mean 'runs.read'?)")
        assert all(p.value in message for p in Permission)

    def test_a_router_with_a_typo_fails_to_import(self, tmp_path: Path) -> None:
        source = tmp_path / "typo_router.py"
        source.write_text(
            "from fastapi import APIRouter, Depends\n"
            "from app.auth.dependencies import require\n"
            'router = APIRouter(dependencies=[Depends(require("secrets.mange"))])\n'
        )
        spec = importlib.util.spec_from_file_location("typo_router", source)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        with pytest.raises(UnknownPermission, match=r"did you mean 'secrets\.manage'"):
            spec.loader.exec_module(module)

    @pytest.mark.parametrize(
        "permission", ["", "*", "secrets.*", "secrets.read:X", "services.run:oauth", "Runs.Read"]
    )
    def test_only_a_plain_permission_can_be_required(self, permission: str) -> None:
        # A scoped one names something from the request: the route checks it in its body.
        with pytest.raises(UnknownPermission):
            require(permission)  # type: ignore[arg-type]

    def test_the_dependency_says_what_it_checks(self) -> None:
        assert required_permission(require(Permission.RUNS_READ)) is Permission.RUNS_READ
        assert required_permission(require("runs.read")) is Permission.RUNS_READ  # type: ignore[arg-type]
        assert required_permission(actor) is None


class TestGrammar:
    @pytest.mark.parametrize(
        "permission",
        [
            "*",
            "secrets.manage",
            "services.manage",
            "schedules.manage",
            "runs.read",
            "accounts.manage",
            "secrets.read:ACCESS_TOKEN",
            "secrets.read:*",
            "secrets.read:OAUTH_*",
            "secrets.update_from_service:REFRESH_TOKEN",
            "secrets.update_from_service:*",
            "services.run:oauth",
            "services.run:oauth/refresh-token",
            "services.run:oauth/*",
            "services.run:oauth*",
            "services.run:*",
            "act_as:ci-deployer",
            "act_as:*",
            "secrets.*",
            "services.run*",
            "s*",
        ],
    )
    def test_valid(self, permission: str) -> None:
        assert is_valid_permission(permission)

    @pytest.mark.parametrize(
        "permission",
        [
            "",
            "foo",
            "secrets",
            "secrets.raed:X",
            "secrets.manage:X",
            "secrets.manage:*",
            "runs.read:abc",
            "secrets.read:",
            "secrets.read:A*B",
            "secrets.read:*X",
            "secrets.read:a:b",
            "secrets.read:a:*",
            "secrets.read:1ABC",
            "secrets.read:A B",
            "services.run:OAuth",
            "services.run:oauth/",
            "services.run:/refresh",
            "services.run:oauth/refresh/x",
            "act_as:CI",
            "**",
            "*:*",
            "x*",
            " secrets.manage",
            "secrets.manage ",
            "SECRETS.MANAGE",
        ],
    )
    def test_invalid(self, permission: str) -> None:
        assert not is_valid_permission(permission)

    def test_validate_keeps_order_and_drops_repeats(self) -> None:
        permissions = ["runs.read", "secrets.read:A", "runs.read", "*"]
        assert validate_permissions(permissions) == ["runs.read", "secrets.read:A", "*"]

    def test_validate_names_the_first_bad_one_and_what_is_allowed(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            validate_permissions(["runs.read", "secrets.raed:X", "foo"])
        message = caught.value.message
        assert message.startswith("permissions[1]: 'secrets.raed:X' is not a permission")
        assert "did you mean 'secrets.read:X'?" in message
        for known in ("secrets.read:NAME", "services.run:SLUG[/ID]", "act_as:ACCOUNT", "*"):
            assert known in message
        assert caught.value.extra == {"path": "permissions[1]"}

    def test_validate_explains_a_bad_name(self) -> None:
        with pytest.raises(InvalidInput, match="SLUG or SLUG/READABLE_ID"):
            validate_permissions(["services.run:OAuth"])
        with pytest.raises(InvalidInput, match="takes no ':NAME'"):
            validate_permissions(["runs.read:x"])


class TestMatching:
    @pytest.mark.parametrize(
        ("granted", "wanted"),
        [
            ("*", "secrets.manage"),
            ("*", "secrets.read:X"),
            ("*", "*"),
            ("secrets.manage", "secrets.manage"),
            ("secrets.read:X", "secrets.read:X"),
            ("secrets.read:*", "secrets.read:X"),
            ("secrets.read:*", "secrets.read:*"),
            ("secrets.read:OAUTH_*", "secrets.read:OAUTH_ACCESS"),
            ("secrets.read:OAUTH_*", "secrets.read:OAUTH_"),
            ("secrets.*", "secrets.read:X"),
            ("secrets.*", "secrets.manage"),
            ("secrets.*", "secrets.read:*"),
            ("services.run:oauth*", "services.run:oauth2"),
            ("services.run:oauth/*", "services.run:oauth/refresh-token"),
        ],
    )
    def test_matches(self, granted: str, wanted: str) -> None:
        assert permission_matches(granted, wanted)

    @pytest.mark.parametrize(
        ("granted", "wanted"),
        [
            ("secrets.read:X", "secrets.read:XY"),
            ("secrets.read:XY", "secrets.read:X"),
            ("secrets.read", "secrets.read:X"),
            ("secrets.read:X", "secrets.read:*"),
            ("secrets.read:OAUTH_*", "secrets.read:*"),
            ("secrets.*", "*"),
            ("secrets.read:*", "secrets.update_from_service:X"),
            ("secrets.manage", "secrets.read:X"),
            ("services.run:oauth", "services.run:oauth/refresh-token"),
            ("services.run:oauth/refresh-token", "services.run:oauth"),
            ("services.run:oauth/*", "services.run:oauth2/x"),
            ("runs.read", "runs.rea"),
        ],
    )
    def test_does_not_match(self, granted: str, wanted: str) -> None:
        assert not permission_matches(granted, wanted)

    def test_an_actor_can_what_any_of_its_permissions_covers(self) -> None:
        holder = actor("runs.read", "secrets.read:A*")
        assert holder.can("runs.read") and holder.can("secrets.read:ABC")
        assert not holder.can("secrets.read:B") and not holder.can("secrets.manage")
        assert not actor().can("runs.read")


class TestEnsureMayGrant:
    def test_granting_what_one_holds_is_fine(self) -> None:
        ensure_may_grant(actor("accounts.manage", "secrets.*"), ["secrets.read:X"], "role 'r'")
        ensure_may_grant(actor("*"), ["*", "accounts.manage"], "role 'r'")
        ensure_may_grant(actor(), [], "role 'r'")

    @pytest.mark.parametrize(
        ("held", "granted", "missing"),
        [
            (("accounts.manage",), ["*"], "*"),
            (("accounts.manage",), ["accounts.manage", "secrets.manage"], "secrets.manage"),
            (("secrets.*",), ["*"], "*"),
            (("secrets.read:A",), ["secrets.read:*"], "secrets.read:*"),
            (("secrets.read:OAUTH_*",), ["secrets.read:O*"], "secrets.read:O*"),
        ],
    )
    def test_granting_more_is_refused_naming_the_permission(
        self, held: tuple[str, ...], granted: list[str], missing: str
    ) -> None:
        with pytest.raises(PermissionDenied) as caught:
            ensure_may_grant(actor(*held), granted, "role 'mine'")
        assert caught.value.extra["permission"] == missing
        assert "role 'mine'" in caught.value.message and missing in caught.value.message

    def test_every_missing_permission_is_named(self) -> None:
        with pytest.raises(PermissionDenied) as caught:
            ensure_may_grant(actor(), ["runs.read", "secrets.manage"], "role 'r'")
        assert "runs.read, secrets.manage" in caught.value.message
