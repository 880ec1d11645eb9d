// Reference peer 2: vpiska's room protocol, minimally, on Node's `ws` package.
//
// Same URL, same token check (HS256 with JWT_KEY, iss/aud/exp required) before the upgrade,
// and every `chatMessage/<text>` of a member is sent to each member of its room as
// `chatMessage/{json}` with the same JSON keys. No store, no membership frames, no flood
// control: the bare protocol on the most used Node WebSocket server, as a yardstick.
//
// Usage: PORT=… JWT_KEY=… node node_peer.js (listens on 127.0.0.1).
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const PATH = '/api/v1/websockets/event';
const CHAT = 'chatMessage/';
const KEY = process.env.JWT_KEY;
const rooms = new Map();

// The claims of a valid token, or null: what vpiska's PyJWT call accepts, written out.
function verify(token) {
  const parts = (token || '').split('.');
  if (parts.length !== 3) return null;
  const expected = crypto.createHmac('sha256', KEY).update(parts[0] + '.' + parts[1]).digest();
  const given = Buffer.from(parts[2], 'base64url');
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return null;
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    return null;
  }
  if (header.alg !== 'HS256' || claims.iss !== 'VpiskaServer' || claims.aud !== 'VpiskaClient'
      || typeof claims.exp !== 'number' || claims.exp * 1000 <= Date.now()
      || typeof claims.ID !== 'string' || typeof claims.Name !== 'string') return null;
  return claims;
}

function refuse(socket, status) {
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Length: 0\r\n\r\n`);
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });
const server = http.createServer((req, res) => { res.writeHead(404).end(); });

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== PATH) return refuse(socket, 404);
  const claims = verify(url.searchParams.get('accessToken'));
  if (claims === null) return refuse(socket, 401);
  const eventId = url.searchParams.get('eventId');
  if (!eventId) return refuse(socket, 400);
  wss.handleUpgrade(req, socket, head, (ws) => join(ws, eventId, claims));
});

function join(ws, eventId, claims) {
  let room = rooms.get(eventId);
  if (room === undefined) rooms.set(eventId, (room = new Set()));
  room.add(ws);
  const sender = { userId: claims.ID, userName: claims.Name, userImageId: claims.ImageID || '' };
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    if (!text.startsWith(CHAT)) return;
    const frame = Buffer.from(CHAT + JSON.stringify({ ...sender, message: text.slice(CHAT.length) }));
    for (const member of room) {
      if (member.readyState === WebSocket.OPEN) member.send(frame, { binary: false });
    }
  });
  ws.on('close', () => {
    room.delete(ws);
    if (room.size === 0 && rooms.get(eventId) === room) rooms.delete(eventId);
  });
  ws.on('error', () => {});
}

server.listen({ host: '127.0.0.1', port: Number(process.env.PORT), backlog: 1024 });
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
