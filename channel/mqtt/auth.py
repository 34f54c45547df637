"""Who is this box? A CONNECT's client id and credential → a verified identity.

The client id is the device id. The credential is, in order of preference:

* a device token (``channel token issue``) as the password, in its base64url text
  form or as raw bytes; the user name, if any, must be the device id;
* the token alone as the user name, with no password (clients that cannot send a
  password without a user name, or that put the token there);
* a TLS client certificate whose common name is the device id (``[tls] client_ca``).

A box that sends an empty client id with a token gets the token's device id
(told back in CONNACK at MQTT 5). With ``[mqtt] allow_anonymous`` a CONNECT
without a credential is accepted under any client id (test rigs only).

Pure and synchronous, like ``channel.security.auth``: one Ed25519 verification.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from channel.mqtt.packets import Connect
from channel.mqtt.reasons import MQTT_5, ReasonCode
from channel.rpc.model import DeviceContext
from channel.security.tokens import (
    TOKEN_VERSION,
    TokenError,
    TokenVerifier,
    check_id,
    decode_token_text,
)
from channel.wire.errors import ErrorCode

#: The app id of boxes that authenticate without a token (certificate, anonymous).
MQTT_APP_ID = "mqtt"
MTLS_SCOPE = "mtls"
TOKEN_VERSION_BYTE = bytes((TOKEN_VERSION,))


@dataclass(frozen=True, slots=True)
class MqttIdentity:
    device: DeviceContext
    #: The client id the session runs under (the device id).
    client_id: str
    #: When the credential expires (unix s; 0: never).
    expires_at: int
    #: The server chose the client id (the CONNECT had none): say so in CONNACK.
    assigned: bool = False


class MqttRefused(Exception):
    """A CONNECT is refused; ``reason_code`` goes in the CONNACK."""

    def __init__(self, reason_code: ReasonCode, message: str) -> None:
        super().__init__(f"{reason_code.name}: {message}")
        self.reason_code = reason_code
        self.message = message


#: Token failures as CONNACK reason codes (3.1.1 maps them to return codes 4 and 5).
_TOKEN_REASONS = {
    ErrorCode.AUTH_INVALID: ReasonCode.BAD_USER_NAME_OR_PASSWORD,
    ErrorCode.AUTH_EXPIRED: ReasonCode.BAD_USER_NAME_OR_PASSWORD,
    ErrorCode.FORBIDDEN: ReasonCode.NOT_AUTHORIZED,
}


class MqttAuthenticator:
    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        allow_anonymous: bool = False,
        allow_client_certificates: bool = False,
        zone: str = "",
        client_certificate_ttl_s: int = 86_400,
    ) -> None:
        self._verifier = verifier
        self.allow_anonymous = allow_anonymous
        self._allow_client_certificates = allow_client_certificates
        self._zone = zone
        self._certificate_ttl_s = client_certificate_ttl_s

    def authenticate(
        self, connect: Connect, version: int, client_cert_cn: str | None, now: float
    ) -> MqttIdentity:
        """Verify a CONNECT; raise ``MqttRefused`` with the reason to send."""
        if connect.properties.authentication_method is not None:
            raise MqttRefused(
                ReasonCode.BAD_AUTHENTICATION_METHOD,
                "enhanced authentication is not supported; send the token as the password",
            )
        client_id = connect.client_id
        if client_id:
            _check_client_id(client_id)
        token = _token_of(connect)
        if token is not None:
            return self._by_token(token, connect, now)
        if self._allow_client_certificates and client_cert_cn is not None:
            if client_id and client_cert_cn != client_id:
                raise MqttRefused(
                    ReasonCode.NOT_AUTHORIZED, "client certificate is for another client id"
                )
            expires = int(now) + self._certificate_ttl_s
            return self._identity(client_cert_cn, client_cert_cn, MQTT_APP_ID, (MTLS_SCOPE,),
                                  expires, assigned=not client_id)  # fmt: skip
        if self.allow_anonymous:
            return self._anonymous(connect, version)
        raise MqttRefused(
            ReasonCode.NOT_AUTHORIZED,
            "no credential: send the device token as the password (user name = device id)",
        )

    def _by_token(self, token: bytes, connect: Connect, now: float) -> MqttIdentity:
        client_id = connect.client_id
        username = connect.username
        if connect.password is not None and username and client_id and username != client_id:
            raise MqttRefused(
                ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                "the user name must be the device id (the client id) or empty",
            )
        try:
            claims = self._verifier.verify(token, device_id=client_id or None, app_id=None, now=now)
        except TokenError as exc:
            raise MqttRefused(
                _TOKEN_REASONS.get(exc.code, ReasonCode.NOT_AUTHORIZED), exc.message
            ) from None
        return self._identity(
            claims.device_id,
            claims.user_id,
            claims.app_id,
            claims.scopes,
            claims.expires_at,
            assigned=not client_id,
        )

    def _anonymous(self, connect: Connect, version: int) -> MqttIdentity:
        client_id = connect.client_id
        if not client_id:
            # 3.1.1 (section 3.1.3.1): an empty client id needs a clean session; at
            # MQTT 5 the server assigns one either way.
            if version != MQTT_5 and not connect.clean_start:
                raise MqttRefused(
                    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                    "an empty client id needs clean session 1",
                )
            client_id = "auto-" + os.urandom(9).hex()
        return self._identity(client_id, connect.username or "", MQTT_APP_ID, (), 0,
                              assigned=not connect.client_id)  # fmt: skip

    def _identity(
        self,
        device_id: str,
        user_id: str,
        app_id: str,
        scopes: tuple[str, ...],
        expires_at: int,
        *,
        assigned: bool,
    ) -> MqttIdentity:
        device = DeviceContext(
            device_id=device_id,
            user_id=user_id,
            app_id=app_id,
            app_version="",
            platform="mqtt",
            zone=self._zone,
            scopes=scopes,
            session_id=os.urandom(8).hex(),
        )
        return MqttIdentity(device, device_id, expires_at, assigned)


def _check_client_id(client_id: str) -> None:
    try:
        check_id("client id", client_id)
    except ValueError as exc:
        raise MqttRefused(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, str(exc)) from None


def _token_of(connect: Connect) -> bytes | None:
    """The device token a CONNECT carries, if any (password, else the user name alone)."""
    if connect.password:
        return _decode(connect.password)
    if connect.username and connect.password is None and len(connect.username) > 64:
        # A token alone in the user name: base64url text of 100+ bytes that decodes to
        # a version-1 token (a long device id as the user name is not taken for one).
        token = _from_text(connect.username.encode())
        if token is not None and token[:1] == TOKEN_VERSION_BYTE:
            return token
    return None


def _decode(raw: bytes) -> bytes:
    """A token from its text form (what ``channel token issue`` prints) or raw bytes
    (which the verifier then judges)."""
    token = _from_text(raw)
    return raw if token is None else token


def _from_text(raw: bytes) -> bytes | None:
    try:
        return decode_token_text(raw.decode("ascii"))
    except (UnicodeDecodeError, TokenError):
        return None
