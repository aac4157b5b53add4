// Durable ingest through the relays a user might pick instead of the broker, measured the way
// ingest.cc measures the broker: closed-loop publishers, each sending one payload and waiting
// for the server's acknowledgement before the next, plus one consumer that receives every
// message so the bytes are really relayed.
//
//  - mosquitto (Debian package `mosquitto`): MQTT 3.1.1, PUBLISH at QoS 1 acknowledged by
//    PUBACK, a QoS 1 subscriber with a persistent session (clean session off), persistence on
//    with the strictest autosave mosquitto offers. Its acknowledgement is NOT durable (it goes
//    out before the snapshot that may hold the message), and its figure falls with the run's
//    length: see peers.cc for what that setting does and does not guarantee.
//  - redis-server (Debian package `redis-server`): Streams, XADD acknowledged by its reply, with
//    appendonly yes and appendfsync always (the reply leaves only after the AOF write has been
//    synced with fdatasync, group-committed per event-loop pass, comparable to our synced group
//    commit); the consumer follows the stream with XREAD BLOCK into a capped stream.
//
// The clients are the projects' own libraries as Debian packages them, libmosquitto
// (`libmosquitto-dev`) and hiredis (`libhiredis-dev`), found with pkg-config by CMakeLists.txt.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fedlora::bench {

struct RelayFigure {
  double updates_per_s = 0, mb_per_s = 0, p50_ms = 0, p99_ms = 0;
  // Publishes the server acknowledged, and how many of them the consumer received. Fewer
  // delivered means the relay discarded some: Redis trims the capped stream past a consumer
  // that fell behind, mosquitto drops beyond its queue limit (see peers.cc).
  uint64_t delivered = 0;
  uint64_t acknowledged = 0;
};

// Each starts its own server process on a free 127.0.0.1 port with its config and data in
// `scratch_dir` (created by the caller, removed by it afterwards), waits until it accepts
// connections, runs `publishers` closed-loop publisher threads for `seconds` with payloads of
// `bytes` bytes and one consumer thread, then stops the server (SIGTERM, waitpid). Throws
// std::runtime_error if the server binary is missing (naming the Debian package that provides
// it), fails to start, or a client reports an error or a reply the measurement does not expect.
RelayFigure MosquittoRelay(const std::string& scratch_dir, size_t bytes, int publishers, double seconds);
RelayFigure RedisStreamsRelay(const std::string& scratch_dir, size_t bytes, int publishers, double seconds);

}  // namespace fedlora::bench
