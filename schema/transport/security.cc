#include "schema/transport/security.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace fedlora::security {
namespace {

constexpr size_t kZ85KeyLength = 40;

std::string Trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string_view::npos) return "";
  const auto e = s.find_last_not_of(" \t\r");
  return std::string(s.substr(b, e - b + 1));
}

// The lines of a text file that are neither blank nor comments, with their 1-based numbers.
Result<std::vector<std::pair<int, std::string>>> ReadLines(const std::string& path, std::string_view what) {
  std::ifstream in(path);
  if (!in) return NotFound(fmt::format("cannot read {} '{}'", what, path));
  std::vector<std::pair<int, std::string>> lines;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    // Only whole lines are comments: '#' is one of Z85's characters.
    std::string t = Trim(line);
    if (!t.empty() && t[0] != '#') lines.emplace_back(n, std::move(t));
  }
  return lines;
}

// `name = value` entries of a key file.
Result<std::map<std::string, std::string>> ReadEntries(const std::string& path) {
  ASSIGN_OR_RETURN(auto lines, ReadLines(path, "key file"));
  std::map<std::string, std::string> entries;
  for (const auto& [n, line] : lines) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) {
      if (lines.size() == 1 && line.size() == kZ85KeyLength) {
        entries["public"] = line;  // a bare public key
        continue;
      }
      return InvalidArgument(fmt::format("{}:{}: expected `public = KEY` or `secret = KEY`", path, n));
    }
    entries[Trim(std::string_view(line).substr(0, eq))] = Trim(std::string_view(line).substr(eq + 1));
  }
  return entries;
}

}  // namespace

Result<std::string> DecodeKey(std::string_view z85, std::string_view what) {
  if (z85.size() != kZ85KeyLength) {
    return InvalidArgument(fmt::format("{} is {} characters long; a Z85 CURVE key has {}", what, z85.size(),
                                       kZ85KeyLength));
  }
  std::string raw(32, '\0');
  const std::string copy(z85);
  if (zmq_z85_decode(reinterpret_cast<uint8_t*>(raw.data()), copy.c_str()) == nullptr) {
    return InvalidArgument(fmt::format("{} is not valid Z85", what));
  }
  return raw;
}

Result<KeyPair> Generate() {
  if (!zmq_has("curve")) return Unimplemented("this libzmq was built without CURVE support");
  char pub[kZ85KeyLength + 1];
  char sec[kZ85KeyLength + 1];
  if (zmq_curve_keypair(pub, sec) != 0) return Internal(fmt::format("zmq_curve_keypair: {}", zmq_strerror(zmq_errno())));
  return KeyPair{pub, sec};
}

Status WriteKeyFiles(const std::string& prefix, std::string_view name, const KeyPair& keys) {
  const std::string secret_path = prefix + ".key";
  const std::string public_path = prefix + ".pub";
  for (const auto& p : {secret_path, public_path}) {
    if (std::filesystem::exists(p)) {
      return AlreadyExists(fmt::format("'{}' exists; keys are never overwritten (remove it first)", p));
    }
  }
  {
    // Created 0600 before anything is written, so the secret is never readable by others.
    std::FILE* f = std::fopen(secret_path.c_str(), "wx");
    if (f == nullptr) return Unavailable(fmt::format("cannot create '{}'", secret_path));
    ::chmod(secret_path.c_str(), 0600);
    const std::string text = fmt::format(
        "# fedlora CURVE secret key of '{}': keep it private (mode 0600)\npublic = {}\nsecret = {}\n", name,
        keys.public_key, keys.secret_key);
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (std::fclose(f) != 0 || !ok) return Unavailable(fmt::format("cannot write '{}'", secret_path));
  }
  std::ofstream pub(public_path);
  pub << fmt::format("# fedlora CURVE public key of '{}'\npublic = {}\n", name, keys.public_key);
  if (!pub.flush()) return Unavailable(fmt::format("cannot write '{}'", public_path));
  return Status::Ok();
}

Result<KeyPair> ReadKeyPair(const std::string& path) {
  ASSIGN_OR_RETURN(auto entries, ReadEntries(path));
  auto it = entries.find("secret");
  if (it == entries.end()) {
    return InvalidArgument(fmt::format("'{}' holds no `secret = KEY` line (is it the .pub file?)", path));
  }
  RETURN_IF_ERROR(DecodeKey(it->second, fmt::format("the secret key in '{}'", path)).status());
  char pub[kZ85KeyLength + 1];
  if (zmq_curve_public(pub, it->second.c_str()) != 0) {
    return InvalidArgument(fmt::format("cannot derive the public key from '{}': {}", path, zmq_strerror(zmq_errno())));
  }
  KeyPair keys{pub, it->second};
  if (auto p = entries.find("public"); p != entries.end() && p->second != keys.public_key) {
    return InvalidArgument(fmt::format("'{}': its public key does not belong to its secret key", path));
  }
  return keys;
}

Result<std::string> ReadPublicKey(const std::string& path) {
  ASSIGN_OR_RETURN(auto entries, ReadEntries(path));
  auto it = entries.find("public");
  if (it == entries.end()) return InvalidArgument(fmt::format("'{}' holds no `public = KEY` line", path));
  RETURN_IF_ERROR(DecodeKey(it->second, fmt::format("the public key in '{}'", path)).status());
  return it->second;
}

std::string_view RoleName(Role role) { return role == Role::kWorker ? "worker" : "aggregator"; }

Result<Allowlist> ReadAllowlist(const std::string& path) {
  ASSIGN_OR_RETURN(auto lines, ReadLines(path, "allowlist"));
  Allowlist list;
  for (const auto& [n, line] : lines) {
    std::istringstream fields(line);
    std::string role, name, key, extra;
    fields >> role >> name >> key;
    if (key.empty() || (fields >> extra)) {
      return InvalidArgument(fmt::format("{}:{}: expected `worker|aggregator NAME PUBLIC-KEY`", path, n));
    }
    AllowedClient client;
    if (role == "worker") {
      client.role = Role::kWorker;
    } else if (role == "aggregator") {
      client.role = Role::kAggregator;
    } else {
      return InvalidArgument(fmt::format("{}:{}: unknown role '{}' (worker or aggregator)", path, n, role));
    }
    // Names follow the client id syntax: [A-Za-z0-9._:-], 1..128.
    const bool name_ok = !name.empty() && name.size() <= 128 &&
                         name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-") ==
                             std::string::npos;
    if (!name_ok) return InvalidArgument(fmt::format("{}:{}: '{}' is not a valid client name", path, n, name));
    client.name = name;
    ASSIGN_OR_RETURN(auto raw, DecodeKey(key, fmt::format("{}:{}: the key", path, n)));
    if (list.contains(raw)) {
      return InvalidArgument(fmt::format("{}:{}: this key is already listed (for '{}')", path, n, list[raw].name));
    }
    list.emplace(std::move(raw), std::move(client));
  }
  return list;
}

Result<ClientKeys> LoadClientKeys(const std::string& broker_key_path, const std::string& key_path) {
  if (broker_key_path.empty() != key_path.empty()) {
    return InvalidArgument(broker_key_path.empty()
                               ? "--key needs --broker-key (the broker's public key file)"
                               : "--broker-key needs --key (this client's secret key file from `fedlora keygen`)");
  }
  ClientKeys keys;
  if (key_path.empty()) return keys;
  ASSIGN_OR_RETURN(keys.server_public, ReadPublicKey(broker_key_path));
  ASSIGN_OR_RETURN(keys.own, ReadKeyPair(key_path));
  return keys;
}

void ApplyClient(zmq::socket_t& socket, const ClientKeys& keys) {
  if (!keys.enabled()) return;
  socket.set(zmq::sockopt::curve_serverkey, keys.server_public);
  socket.set(zmq::sockopt::curve_publickey, keys.own.public_key);
  socket.set(zmq::sockopt::curve_secretkey, keys.own.secret_key);
}

void ApplyServer(zmq::socket_t& socket, const KeyPair& server, std::string_view domain) {
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, server.secret_key);
  socket.set(zmq::sockopt::zap_domain, std::string(domain));
}

bool IsLoopback(std::string_view endpoint) {
  if (endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://")) return true;
  if (!endpoint.starts_with("tcp://")) return false;
  std::string_view host = endpoint.substr(6);
  if (host.starts_with("[")) return host.starts_with("[::1]:");
  host = host.substr(0, host.rfind(':'));
  return host == "localhost" || host.starts_with("127.");
}

std::string GenerateSecret() {
  unsigned char bytes[32];
  randombytes_buf(bytes, sizeof(bytes));
  std::string hex;
  for (unsigned char b : bytes) hex += fmt::format("{:02x}", b);
  return hex;
}

Status WriteSecretFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return errno == EEXIST ? AlreadyExists(fmt::format("'{}' exists; not overwritten", path))
                           : Unavailable(fmt::format("cannot create '{}': {}", path, std::strerror(errno)));
  }
  const std::string text = GenerateSecret() + "\n";
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) return Unavailable(fmt::format("cannot write '{}'", path));
  return Status::Ok();
}

Result<std::string> EnsureSecretFile(const std::string& path) {
  if (Status s = WriteSecretFile(path); !s.ok() && s.code() != Code::kAlreadyExists) return s;
  // The other process may have created the file an instant before writing into it.
  for (int attempt = 0;; ++attempt) {
    auto secret = ReadSecretFile(path);
    if (secret.ok() || attempt == 50 || secret.status().code() != Code::kInvalidArgument) return secret;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Result<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound(fmt::format("cannot read the aggregator secret file '{}'", path));
  std::string secret, more;
  std::getline(in, secret);
  while (!secret.empty() && (secret.back() == '\r' || secret.back() == ' ')) secret.pop_back();
  if (std::getline(in, more) && !more.empty()) {
    return InvalidArgument(fmt::format("'{}' must hold the secret on one line", path));
  }
  if (secret.size() < kMinSecretLength) {
    return InvalidArgument(fmt::format("the secret in '{}' is {} characters; at least {} are needed "
                                       "(`fedlora keygen --secret FILE` writes one)",
                                       path, secret.size(), kMinSecretLength));
  }
  return secret;
}

void ApplySecretClient(zmq::socket_t& socket, std::string_view secret) {
  if (secret.empty()) return;
  socket.set(zmq::sockopt::plain_username, "aggregator");
  socket.set(zmq::sockopt::plain_password, std::string(secret));
}

void ApplySecretServer(zmq::socket_t& socket, std::string_view domain) {
  socket.set(zmq::sockopt::plain_server, 1);
  socket.set(zmq::sockopt::zap_domain, std::string(domain));
}

bool SecretsEqual(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return sodium_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace fedlora::security
