// CURVE security shared by the broker and its clients: key files, the broker's allowlist of
// client public keys, and the socket options that turn encryption and authentication on.
//
// Key files (written by `fedlora keygen`) are text, one `name = value` per line; a line starting
// with `#` is a comment (only a whole line: `#` is a Z85 character):
//   NAME.key     public = <Z85>  and  secret = <Z85>   (mode 0600: keep it private)
//   NAME.pub     public = <Z85>                         (give this to the other side)
// Keys are ZeroMQ's Z85 encoding of a 32-byte Curve25519 key (40 characters).
//
// The allowlist (broker `--allow FILE`) has one client per line: `ROLE NAME PUBLIC-KEY`, where
// ROLE is `worker` or `aggregator` and NAME is the identity the key authenticates: a worker may
// publish only updates whose client_id is NAME. Lines starting with `#` are comments.
// Thread safety: pure functions and plain values.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include <zmq.hpp>

#include "schema/status.h"

namespace fedlora::security {

struct KeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters
};

// A fresh Curve25519 key pair. Errors: kUnimplemented when libzmq was built without CURVE.
Result<KeyPair> Generate();
// Writes NAME.key (0600) and NAME.pub next to each other; refuses to overwrite either.
Status WriteKeyFiles(const std::string& prefix, std::string_view name, const KeyPair& keys);
// Reads a secret key file; the public key is derived from the secret (a file's `public =`
// line, when present, must match it).
Result<KeyPair> ReadKeyPair(const std::string& path);
// Reads the public key from a .pub or .key file, or a bare 40-character Z85 key on one line.
Result<std::string> ReadPublicKey(const std::string& path);
// Checks Z85 syntax and length; returns the 32 raw bytes.
Result<std::string> DecodeKey(std::string_view z85, std::string_view what);

enum class Role { kWorker, kAggregator };
std::string_view RoleName(Role role);

struct AllowedClient {
  Role role = Role::kWorker;
  std::string name;
};

// Raw 32-byte public key -> who it is.
using Allowlist = std::map<std::string, AllowedClient>;
// Errors name the file and line: unknown role, bad name, bad key, a key listed twice.
Result<Allowlist> ReadAllowlist(const std::string& path);

// What a client needs to talk to a secured broker. Empty server_public: plaintext.
struct ClientKeys {
  std::string server_public;  // Z85
  KeyPair own;
  bool enabled() const { return !server_public.empty(); }
};
// Loads `--broker-key` and `--key`: both or neither. Errors name the flag at fault.
Result<ClientKeys> LoadClientKeys(const std::string& broker_key_path, const std::string& key_path);
// Sets the CURVE client options on a socket before it connects (no-op when !keys.enabled()).
void ApplyClient(zmq::socket_t& socket, const ClientKeys& keys);
// Makes a socket a CURVE server authenticating through the ZAP handler under `domain`.
void ApplyServer(zmq::socket_t& socket, const KeyPair& server, std::string_view domain);

// The aggregator secret: without CURVE, a broker given one admits on its aggregator socket only
// peers that present it (ZeroMQ's PLAIN mechanism, checked by the broker's ZAP handler), so an
// arbitrary process that can reach the socket cannot subscribe to an adapter or replace its
// global. PLAIN sends it unencrypted: it keeps out other processes of this machine or of a
// trusted network, not an eavesdropper; across untrusted networks use CURVE (role-bound keys).
// The file holds the secret on one line, at least 16 characters; `fedlora keygen --secret`
// writes one (mode 0600).
inline constexpr size_t kMinSecretLength = 16;
// A fresh secret: 32 random bytes as 64 hex digits.
std::string GenerateSecret();
// Writes PATH (mode 0600) with a fresh secret; refuses to overwrite.
Status WriteSecretFile(const std::string& path);
// The secret in PATH, written first (mode 0600) if there is none: a broker and an aggregator
// started together on one store both call it, and whichever is first makes the secret.
Result<std::string> EnsureSecretFile(const std::string& path);
// Errors: kNotFound, kInvalidArgument (empty, shorter than kMinSecretLength, more than one line).
Result<std::string> ReadSecretFile(const std::string& path);
// Client side: present `secret` on this socket (before it connects).
void ApplySecretClient(zmq::socket_t& socket, std::string_view secret);
// Server side: require a secret on this socket, checked by the ZAP handler under `domain`.
void ApplySecretServer(zmq::socket_t& socket, std::string_view domain);
// Compares in time independent of where they differ.
bool SecretsEqual(std::string_view a, std::string_view b);

// True for endpoints only this machine can reach: tcp on 127.0.0.0/8, localhost or ::1, and
// ipc:// and inproc://. Binding anything else in plaintext needs an explicit opt-in.
bool IsLoopback(std::string_view endpoint);

}  // namespace fedlora::security
