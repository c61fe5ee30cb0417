"""Userdata, the built-in install methods and profiles (extensions.md §3.5, §3.6, §3.8).

A profile names a system template and optionally network and storage templates, userdata and
an OVA; it is checked whole (`pvcd.specs.provisioner.check_profile`) against the cached objects
and written in one transaction that also touches every object it names at the version it was
checked against (`pvcd.state.provisioner`), so a concurrent delete of one of them cannot leave
it naming nothing. Deleting a profile is always allowed; the answer names the VMs made from it,
which then get no user-data from the metadata service (§4).

Scripts are not stored: `/provisioner/script` lists the built-in methods and refuses writes.
"""

from __future__ import annotations

from typing import Any

from pvcd.api.provisioner_objects import NAME_LIMIT, ProvisionerHandler, retry_lost_races
from pvcd.api.routing import route
from pvcd.api.values import Value, accepts, choice, texts, value
from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.provisioner import INSTALL_METHODS, PROFILE_TYPES, Profile, Userdata
from pvcd.specs.provisioner import (
    SCRIPTS,
    SCRIPTS_REFUSED,
    check_object_name,
    check_profile,
    check_userdata,
)
from pvcd.state.provisioner import (
    profile_references,
    read_object,
    touch_ops,
    vms_naming_profile,
)

NAME = value("name", "The new object's name: 1-63 letters, digits, _ . + - (not starting with "
             ". + -).", str, required=True)

# --- userdata (§3.5) ---------------------------------------------------------------------

DATA = value("data", "The user-data text (UTF-8, at most 256 KiB), served to guests as is; "
             "#cloud-config must be a YAML mapping.", str, required=True)


class UserdataBase(ProvisionerHandler):
    def data(self) -> str:
        """`data`, checked: its bytes as sent must be UTF-8 (the values are decoded leniently,
        which would hide that), and the text must pass `check_userdata`."""
        request = self.request
        for source in (request.query_arguments, request.body_arguments):
            for raw in source.get("data", []):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidValue("userdata is not valid UTF-8 text") from None
        return check_userdata(self.values[DATA])

    async def add(self, name: str) -> None:
        record = Userdata(check_object_name(name, "userdata"), self.data())
        await self.create("userdata", name, record.to_doc())
        self.message(f"Added userdata '{name}'")


class UserdataListHandler(UserdataBase):
    @accepts(NAME_LIMIT)
    def get(self) -> None:
        self.reply(self.listed("userdata"))

    @accepts(NAME, DATA)
    @retry_lost_races
    async def post(self) -> None:
        await self.add(self.values[NAME])


class UserdataHandler(UserdataBase):
    def get(self, name: str) -> None:
        self.reply([self.record("userdata", name)[0].to_doc()])

    @accepts(DATA)
    @retry_lost_races
    async def post(self, name: str) -> None:
        await self.add(name)

    @accepts(DATA)
    @retry_lost_races
    async def put(self, name: str) -> None:
        record, version = self.record("userdata", name)
        record.userdata = self.data()
        await self.replace("userdata", name, record.to_doc(), version)
        self.message(f"Modified userdata '{name}'")

    @retry_lost_races
    async def delete(self, name: str) -> None:
        await self.remove("userdata", name)
        self.message(f"Removed userdata '{name}'")


# --- scripts (§3.6) ----------------------------------------------------------------------

class ScriptRefusal(ProvisionerHandler):
    """Writes of scripts: always 510 (no uploaded code is stored or run)."""

    def refuse(self) -> None:
        raise InvalidValue(SCRIPTS_REFUSED)


class ScriptListHandler(ScriptRefusal):
    @accepts(NAME_LIMIT)
    def get(self) -> None:
        pattern = self.values[NAME_LIMIT]
        self.reply([s.to_doc() for s in SCRIPTS.values()
                    if pattern is None or pattern.search(s.name)])

    def post(self) -> None:
        self.refuse()


class ScriptHandler(ScriptRefusal):
    def get(self, name: str) -> None:
        script = SCRIPTS.get(name)
        if script is None:
            raise NotFound(f"script '{name[:60]}' not found: the built-in methods are "
                           f"{', '.join(INSTALL_METHODS)}")
        self.reply([script.to_doc()])

    def post(self, name: str) -> None:
        self.refuse()

    def put(self, name: str) -> None:
        self.refuse()

    def delete(self, name: str) -> None:
        self.refuse()


# --- profiles (§3.8) ---------------------------------------------------------------------

def _named(name: str, what: str) -> Value[str | None]:
    return value(name, f"The {what} (a name).", str)


PROFILE_TYPE = choice("profile_type", PROFILE_TYPES, "provisioner (templates and a method) or "
                      "ova (an imported OVA).", required=True)
SYSTEM_TEMPLATE_NEW = value("system_template", "The system template (a name).", str,
                            required=True)
SYSTEM_TEMPLATE = _named("system_template", "system template")
NETWORK_TEMPLATE = _named("network_template", "network template (empty in PUT: none)")
STORAGE_TEMPLATE = _named("storage_template", "storage template (empty in PUT: none)")
USERDATA = _named("userdata", "userdata served to the VMs (empty in PUT: none)")
SCRIPT = _named("script", "built-in install method: clone, blank or ova (default: clone, or "
                "ova for type ova)")
OVA = _named("ova", "OVA (type ova only)")
ARG = texts("arg", "An argument of the method, name=value (in PUT: replaces the list; an "
            "empty arg clears it).")
PROFILE_VALUES = (PROFILE_TYPE, SYSTEM_TEMPLATE_NEW, NETWORK_TEMPLATE, STORAGE_TEMPLATE,
                  USERDATA, SCRIPT, OVA, ARG)
# PUT: value → profile field
PROFILE_CHANGES: dict[Value[Any], str] = {
    SYSTEM_TEMPLATE: "system_template", NETWORK_TEMPLATE: "network_template",
    STORAGE_TEMPLATE: "storage_template", USERDATA: "userdata", SCRIPT: "script",
    ARG: "arguments"}


class ProfileBase(ProvisionerHandler):
    def checked(self, profile: Profile) -> Profile:
        storage = None if profile.storage_template is None else \
            read_object(self.view, "storage", profile.storage_template)
        return check_profile(profile, self.exists, storage)

    async def add(self, name: str) -> None:
        profile_type = self.values[PROFILE_TYPE]
        script = self.values[SCRIPT] or ("ova" if profile_type == "ova" else "clone")
        profile = self.checked(Profile(
            check_object_name(name, "profile"), profile_type, self.values[SYSTEM_TEMPLATE_NEW],
            self.values[NETWORK_TEMPLATE], self.values[STORAGE_TEMPLATE],
            self.values[USERDATA], script, self.values[OVA], self.values[ARG]))
        await self.create("profile", name, profile.to_doc(),
                          touch_ops(self.view, profile_references(profile)))
        self.message(f"Added profile '{name}'")


class ProfileListHandler(ProfileBase):
    @accepts(NAME_LIMIT)
    def get(self) -> None:
        self.reply(self.listed("profile"))

    @accepts(NAME, *PROFILE_VALUES)
    @retry_lost_races
    async def post(self) -> None:
        await self.add(self.values[NAME])


class ProfileHandler(ProfileBase):
    def get(self, name: str) -> None:
        self.reply([self.record("profile", name)[0].to_doc()])

    @accepts(*PROFILE_VALUES)
    @retry_lost_races
    async def post(self, name: str) -> None:
        await self.add(name)

    @accepts(*PROFILE_CHANGES)
    @retry_lost_races
    async def put(self, name: str) -> None:
        profile, version = self.record("profile", name)
        given = [v for v in PROFILE_CHANGES if self.values.given(v)]
        if not given:
            raise InvalidValue("nothing to change: give at least one of "
                               f"{', '.join(v.name for v in PROFILE_CHANGES)}")
        for change in given:
            setattr(profile, PROFILE_CHANGES[change], self.values[change])
        if not profile.system_template:
            raise InvalidValue("system_template cannot be removed: a profile needs one")
        if profile.script is None:
            raise InvalidValue("script cannot be removed: give one of the built-in methods, "
                               f"{', '.join(INSTALL_METHODS)}")
        profile = self.checked(profile)
        await self.replace("profile", name, profile.to_doc(), version,
                           touch_ops(self.view, profile_references(profile)))
        self.message(f"Modified profile '{name}'")

    @retry_lost_races
    async def delete(self, name: str) -> None:
        """Allowed while VMs name the profile (they keep running; they get no user-data)."""
        self.version("profile", name)  # NotFound first
        users = vms_naming_profile(self.view, name)
        await self.remove("profile", name)
        self.message(f"Removed profile '{name}'" + (
            f"; VM {', '.join(users)} was made from it and now gets no user-data from the "
            "metadata service" if users else ""))


ROUTES = [
    route("/provisioner/userdata", UserdataListHandler),
    route("/provisioner/userdata/<userdata>", UserdataHandler),
    route("/provisioner/script", ScriptListHandler),
    route("/provisioner/script/<script>", ScriptHandler),
    route("/provisioner/profile", ProfileListHandler),
    route("/provisioner/profile/<profile>", ProfileHandler),
]
