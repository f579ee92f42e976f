'use strict';
// Node's test load for the sandbox: what tenant code does, each step named so that a failure says which.
// tests/jail.rs runs it inside `taskcell jail` under the seccomp policy; it also runs as is on a host, which is
// how the ioctl and prctl lists of policies/sandbox.json were found (strace -f of `env -i node load.js`).
// Prints `ok NAME` per step, then OK and exit 0 when all passed.
const assert = require('assert');
const http = require('http'), fs = require('fs'), os = require('os'), path = require('path');
const crypto = require('crypto'), zlib = require('zlib'), cp = require('child_process');
const dgram = require('dgram'), dns = require('dns'), net = require('net');
const { Worker } = require('worker_threads');
const { promisify } = require('util');

async function step(name, fn) {
  try {
    await fn();
    process.stdout.write('ok ' + name + '\n');
  } catch (e) {
    process.stdout.write('FAIL ' + name + ': ' + ((e && e.stack) || e) + '\n');
    process.exitCode = 1;
  }
}

function httpRoundTrip(host) {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => res.end('echo ' + req.url + ' ' + body));
    });
    server.on('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address();
      const req = http.request({ host, port, path: '/x', method: 'POST', agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => server.close(() => (body === 'echo /x ping' ? resolve() : reject(new Error('body: ' + body)))));
      });
      req.on('error', reject);
      req.end('ping');
    });
  });
}

(async () => {
  const lo = os.networkInterfaces().lo || [];
  await step('os.networkInterfaces', () => assert.ok(lo.some((a) => a.address === '127.0.0.1'), JSON.stringify(lo)));
  await step('http_127.0.0.1', () => httpRoundTrip('127.0.0.1'));
  if (lo.some((a) => a.family === 'IPv6' && a.address === '::1')) {
    await step('http_::1', () => httpRoundTrip('::1'));
    // A scoped address: libuv resolves the zone with if_nametoindex (the SIOCGIFINDEX ioctl).
    await step('http_::1%lo', () => httpRoundTrip('::1%lo'));
  } else {
    process.stdout.write('# lo has no ::1: IPv6 not tried\n');
  }
  await step('net_unix_socket', () => new Promise((resolve, reject) => {
    const sock = path.join(os.tmpdir(), 'load-' + process.pid + '.sock');
    const server = net.createServer((c) => c.end('unix')).listen(sock, () => {
      let got = '';
      net.connect(sock).on('data', (d) => (got += d)).on('error', reject)
        .on('end', () => server.close(() => (got === 'unix' ? resolve() : reject(new Error('got ' + got)))));
    });
    server.on('error', reject);
  }));
  await step('dns.lookup', async () => {
    const { address } = await dns.promises.lookup('localhost', { family: 4 });
    assert.strictEqual(address, '127.0.0.1');
    await dns.promises.lookup('localhost', { all: true });
  });
  await step('dgram', () => new Promise((resolve, reject) => {
    const rx = dgram.createSocket('udp4');
    rx.on('error', reject);
    rx.on('message', (m) => {
      rx.close();
      m.toString() === 'datagram' ? resolve() : reject(new Error('got ' + m));
    });
    rx.bind(0, '127.0.0.1', () => {
      const tx = dgram.createSocket('udp4');
      tx.send('datagram', rx.address().port, '127.0.0.1', (e) => { tx.close(); if (e) reject(e); });
    });
  }));
  await step('fs', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'load-'));
    const seen = new Promise((resolve) => {
      const w = fs.watch(dir, (event, name) => { if (name === 'watched') { w.close(); resolve(); } });
    });
    fs.writeFileSync(path.join(dir, 'watched'), 'x');
    await Promise.race([seen, new Promise((_, ko) => setTimeout(() => ko(new Error('fs.watch saw nothing')), 5000))]);
    await fs.promises.writeFile(path.join(dir, 'a'), 'data');
    assert.strictEqual(await fs.promises.readFile(path.join(dir, 'a'), 'utf8'), 'data');
    assert.deepStrictEqual(fs.readdirSync(dir).sort(), ['a', 'watched']);
    assert.strictEqual(fs.statSync(path.join(dir, 'a')).size, 4);
    // Asks for a reflink first (the FICLONE ioctl, refused): libuv falls back to copying.
    fs.copyFileSync(path.join(dir, 'a'), path.join(dir, 'b'), fs.constants.COPYFILE_FICLONE);
    assert.strictEqual(fs.readFileSync(path.join(dir, 'b'), 'utf8'), 'data');
    fs.rmSync(dir, { recursive: true });
  });
  await step('crypto', async () => {
    assert.strictEqual(crypto.createHash('sha256').update('abc').digest('hex'),
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    assert.strictEqual(crypto.randomBytes(32).length, 32);
    const { publicKey, privateKey } = await promisify(crypto.generateKeyPair)('ec', { namedCurve: 'P-256' });
    assert.ok(crypto.verify('sha256', Buffer.from('m'), publicKey, crypto.sign('sha256', Buffer.from('m'), privateKey)));
    assert.strictEqual((await promisify(crypto.scrypt)('pw', 'salt', 32)).length, 32);
  });
  await step('zlib', async () => {
    const data = Buffer.from('taskcell '.repeat(10000));
    assert.ok((await promisify(zlib.gunzip)(await promisify(zlib.gzip)(data))).equals(data));
    assert.ok(zlib.brotliDecompressSync(zlib.brotliCompressSync(data)).equals(data));
  });
  await step('child_process', async () => {
    const { stdout } = await promisify(cp.execFile)(process.execPath, ['-e', 'process.stdout.write(String(6 * 7))']);
    assert.strictEqual(stdout, '42');
    const code = await new Promise((resolve, reject) => {
      const c = cp.spawn(process.execPath, ['-e', 'process.exit(3)'], { stdio: 'ignore' });
      c.on('error', reject);
      c.on('exit', resolve);
    });
    assert.strictEqual(code, 3);
  });
  await step('worker_threads', () => new Promise((resolve, reject) => {
    const w = new Worker("const { parentPort } = require('worker_threads'); let s = 0; for (let i = 1; i <= 1000; i++) s += i; parentPort.postMessage(s)", { eval: true });
    w.on('message', (m) => (m === 500500 ? resolve() : reject(new Error('message ' + m))));
    w.on('error', reject);
  }));
  await step('process.title', () => {
    process.title = 'load'; // prctl(PR_SET_NAME)
    assert.strictEqual(process.title, 'load');
  });
  await step('timers', async () => {
    const t = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 20));
    await new Promise((resolve) => setImmediate(resolve));
    assert.ok(Date.now() - t >= 15);
  });
  if (!process.exitCode) process.stdout.write('OK\n');
})();
