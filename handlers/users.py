"""REST handlers for users, groups and tokens."""

from handlers.base import BaseHandler
from services import validation
from services.auth import ROLES
from services.errors import Forbidden, InvalidArgument


class UserHandler(BaseHandler):
    """PUT and GET /api/v1/users/{id}."""

    async def put(self, user_id):
        self.act_as(user_id, "id")
        fields = user_fields(self.body)
        if not self.principal.is_system and fields["role"] != self.principal.role:
            raise Forbidden("Only a system token may change a user's role", field="role")
        user, _ = await self.app.directory.put_user(user_id, fields)
        self.write_json(user)

    async def get(self, user_id):
        self.act_as(user_id, "id")
        self.write_json(await self.app.directory.get_user(user_id, private=True))


class LogoutHandler(BaseHandler):
    """POST /api/v1/users/{id}/logout."""

    async def post(self, user_id):
        self.act_as(user_id, "id")
        await self.app.directory.logout(user_id)
        self.set_status(204)
        self.finish()


class UserGroupsHandler(BaseHandler):
    """GET /api/v1/users/{id}/groups."""

    async def get(self, user_id):
        self.act_as(user_id, "id")
        self.write_json({"groups": await self.app.directory.groups_of(user_id)})


class GroupsHandler(BaseHandler):
    """POST /api/v1/groups."""

    async def post(self):
        self.require_system()
        body = self.body
        group_id = validation.identifier(body, "id", required=False)
        name = validation.string(body, "name", validation.MAX_NAME_CHARS)
        group_type = validation.integer(body, "type", 1, 2**31 - 1)
        members = validation.id_list(body, "members", validation.MAX_GROUP_MEMBERS)
        group = await self.app.directory.create_group(group_id, name, group_type, members)
        self.write_json(group, status=201)


class GroupHandler(BaseHandler):
    """GET /api/v1/groups/{id}: members and system tokens only."""

    async def get(self, group_id):
        group = await self.app.directory.get_group(group_id)
        member_ids = {member["userId"] for member in group["members"]}
        if not self.principal.is_system and self.principal.user_id not in member_ids:
            raise Forbidden("Only members may read a group", field="group")
        self.write_json(group)


class GroupMembersHandler(BaseHandler):
    """POST /api/v1/groups/{id}/members."""

    async def post(self, group_id):
        self.require_system()
        user_ids = validation.id_list(self.body, "userIds", validation.MAX_GROUP_MEMBERS)
        if not user_ids:
            raise InvalidArgument("userIds must name at least one user", field="userIds")
        self.write_json(await self.app.directory.add_members(group_id, user_ids))


class GroupMemberHandler(BaseHandler):
    """DELETE /api/v1/groups/{id}/members/{userId}."""

    path_fields = ("id", "userId")

    async def delete(self, group_id, user_id):
        self.require_system()
        await self.app.directory.remove_member(group_id, user_id)
        self.set_status(204)
        self.finish()


class TokensHandler(BaseHandler):
    """POST /api/v1/tokens (system only)."""

    async def post(self):
        self.require_system()
        body = self.body
        user_id = validation.identifier(body, "userId")
        role = validation.require(body, "role")
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}", field="role")
        config = self.app.config
        ttl = validation.integer(
            body, "ttlSeconds", 1, config.max_token_ttl_seconds,
            required=False, default=config.default_token_ttl_seconds,
        )
        token, expires_at = self.app.tokens.mint(user_id, role, ttl)
        self.write_json({"token": token, "expiresAt": expires_at}, status=201)


def user_fields(body):
    """Check a user body; return talk_user column values to set."""
    role = validation.require(body, "role")
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(ROLES)}", field="role")
    fields = {
        "name": validation.string(body, "name", validation.MAX_NAME_CHARS),
        "role": role,
    }
    optional = {
        "avatar": "avatar", "getuiClientId": "getui_client_id",
        "wechatOpenId": "wechat_open_id",
    }
    for name, column in optional.items():
        if name not in body:
            continue
        if body[name] is None or body[name] == "":
            fields[column] = None
        elif name == "avatar":
            fields[column] = validation.check_url(
                validation.string(body, name, validation.MAX_URL_CHARS), name
            )
        else:
            fields[column] = validation.identifier(body, name)
    return fields


ID = r"([^/]+)"
ROUTES = [
    (rf"/api/v1/users/{ID}", UserHandler),
    (rf"/api/v1/users/{ID}/logout", LogoutHandler),
    (rf"/api/v1/users/{ID}/groups", UserGroupsHandler),
    (r"/api/v1/groups", GroupsHandler),
    (rf"/api/v1/groups/{ID}", GroupHandler),
    (rf"/api/v1/groups/{ID}/members", GroupMembersHandler),
    (rf"/api/v1/groups/{ID}/members/{ID}", GroupMemberHandler),
    (r"/api/v1/tokens", TokensHandler),
]
