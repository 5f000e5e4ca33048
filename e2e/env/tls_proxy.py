"""TLS in front of a plaintext Kafka broker, for the e2e tests' TLS cluster.

Tansu 0.6's `broker --cert` and `--key` are declared in one exclusive argument group, so it
cannot be started with both (and so never with TLS). This proxy terminates TLS with the
certificate `up.sh` issues and forwards each connection's bytes to the broker, which
advertises the proxy's address: every client connection, bootstrap and broker, is TLS.

Usage: tls_proxy.py LISTEN_PORT BROKER_PORT CERT KEY
"""
import asyncio
import ssl
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


async def main(listen, target, cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(client_reader, client_writer):
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, broker_writer), pipe(broker_reader, client_writer)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen, ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, target, cert, key = sys.argv[1:]
    asyncio.run(main(int(listen), int(target), cert, key))
