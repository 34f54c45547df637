// An MQTT box on mqtt.js, driven by a test over stdin/stdout (one JSON object per line).
//
//   node tests/mqttjs_box.js '{"port": 8883, "ca": "...", "id": "till", "password": "...",
//                              "version": 5, "subscribe": "devices/till/#"}'
//
// Prints {"event": "ready"} once subscribed, {"event": "message", ...} for every PUBLISH it
// gets, {"event": "published", ...} once a publish it was told to make is acknowledged.
// Reads {"publish": {"topic", "payload", "qos", "properties"}} and {"end": true}.
// mqtt.js comes from .tools/node (scripts/test.sh installs it): NODE_PATH points there.

"use strict";
const fs = require("fs");
const readline = require("readline");
const mqtt = require("mqtt");

const options = JSON.parse(process.argv[2]);
const say = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const client = mqtt.connect({
  protocol: "mqtts",
  host: "127.0.0.1",
  servername: "localhost",
  port: options.port,
  ca: fs.readFileSync(options.ca),
  clientId: options.id,
  username: options.id,
  password: options.password,
  protocolVersion: options.version,
  clean: true,
  reconnectPeriod: 0,
});

client.on("error", (err) => { say({ event: "error", message: String(err) }); process.exit(2); });
client.on("connect", () => {
  client.subscribe(options.subscribe, { qos: 1 }, (err, granted) => {
    if (err) { say({ event: "error", message: String(err) }); process.exit(2); }
    say({ event: "ready", granted: granted.map((g) => g.qos) });
  });
});
client.on("message", (topic, payload, packet) => {
  const props = packet.properties || {};
  say({
    event: "message",
    topic,
    payload: payload.toString(),
    qos: packet.qos,
    userProperties: props.userProperties || {},
    correlationData: props.correlationData ? props.correlationData.toString() : null,
  });
});

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.end) {
    client.end(false, {}, () => process.exit(0));
    return;
  }
  const p = command.publish;
  const properties = {};
  if (p.responseTopic) properties.responseTopic = p.responseTopic;
  if (p.correlationData) properties.correlationData = Buffer.from(p.correlationData);
  client.publish(p.topic, p.payload, { qos: p.qos, properties }, (err) => {
    say({ event: "published", topic: p.topic, error: err ? String(err) : null });
  });
});
