#!/usr/bin/env python3
# trickle.py LISTEN_PORT TARGET_PORT RATE_BYTES_PER_S: a TCP proxy whose
# target->client direction is paced at RATE per connection, in 16 KiB steps
# (a steady, honest but slow link).
import asyncio, sys
lport, tport, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
async def pipe(r, w, paced):
    try:
        while True:
            data = await r.read(16384)
            if not data:
                break
            w.write(data)
            await w.drain()
            if paced:
                await asyncio.sleep(len(data) / rate)
    except Exception:
        pass
    finally:
        try: w.close()
        except Exception: pass
async def handle(cr, cw):
    tr, tw = await asyncio.open_connection('127.0.0.1', tport)
    await asyncio.gather(pipe(cr, tw, False), pipe(tr, cw, True))
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', lport)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
