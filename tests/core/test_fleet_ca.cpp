// tests/core/test_fleet_ca.cpp — the fleet CA, enrollment tokens and mutual
// TLS 1.3 (orchestrator/core/fleet_ca.hpp). CA files go to temporary
// directories; handshakes run over real loopback TCP sockets on one
// io_context, each bounded by a timeout so a broken case fails instead of
// hanging. "Protocol bytes" are the bytes the server's application-level read
// handler receives: a rejected peer must leave that count (and the number of
// read callbacks) at zero.
#include "fleet_ca.hpp"

#include <catch2/catch.hpp>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace fleetdl::core;
using asio::ip::tcp;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fleetdl-tls-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

template <class T>
T must(fleetdl::Result<T> r) {
  if (!r.ok()) FAIL(r.error().message);
  return std::move(r).value();
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

FleetCa make_ca(const fs::path& dir) { return must(FleetCa::create(dir)); }

struct Device {
  KeyAndCsr kc;
  std::string cert_pem;
};

Device enroll_device(const FleetCa& ca, const std::string& name) {
  Device d{must(make_key_and_csr(name)), {}};
  d.cert_pem = must(ca.issue_device_cert(d.kc.csr_pem, name, 30));
  return d;
}

// ---------------------------------------------------------------- one exchange
struct Outcome {
  bool server_done = false;
  bool client_done = false;
  std::error_code server_hs;  // server handshake result
  std::error_code client_hs;  // client handshake result
  std::error_code client_io;  // client's write/read after its handshake
  std::size_t protocol_bytes = 0;
  int read_callbacks = 0;
  std::string client_got;
  std::optional<PeerIdentity> server_saw;  // verified_peer on the server
  std::string server_error;                // handshake_error text on the server
  std::string client_error;                // handshake_error text on the client
  std::string enrolled_identity;
  bool timed_out() const { return !(server_done && client_done); }
};

enum class Listener { fleet, enroll };

/// Accepts one connection with `server_ctx`, connects one with `client_ctx`;
/// on a good handshake the client sends "ping", the server's protocol layer
/// reads it and answers "pong".
Outcome exchange(asio::ssl::context& server_ctx, asio::ssl::context& client_ctx, Listener kind) {
  Outcome out;
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  asio::ssl::stream<tcp::socket> server(io, server_ctx);
  asio::ssl::stream<tcp::socket> client(io, client_ctx);
  std::array<char, 64> sbuf{};
  std::array<char, 4> cbuf{};
  static const std::string ping = "ping";
  static const std::string pong = "pong";

  acceptor.async_accept(server.lowest_layer(), [&](std::error_code ec) {
    if (ec) {
      out.server_hs = ec;
      out.server_done = true;
      return;
    }
    server.async_handshake(asio::ssl::stream_base::server, [&](std::error_code hs) {
      out.server_hs = hs;
      if (hs) {
        out.server_error = handshake_error(server, hs, "agent").message;
        std::error_code ignored;
        server.lowest_layer().close(ignored);
        out.server_done = true;
        return;
      }
      if (kind == Listener::fleet) {
        auto peer = verified_peer(server);
        if (peer) out.server_saw = *peer;
      } else {
        auto id = enrollment_identity(server);
        if (id) out.enrolled_identity = *id;
      }
      // The protocol layer starts here, and only here.
      server.async_read_some(asio::buffer(sbuf), [&](std::error_code rec, std::size_t n) {
        ++out.read_callbacks;
        if (rec) {
          out.server_done = true;
          return;
        }
        out.protocol_bytes += n;
        asio::async_write(server, asio::buffer(pong), [&](std::error_code, std::size_t) {
          out.server_done = true;
        });
      });
    });
  });

  client.lowest_layer().async_connect(acceptor.local_endpoint(), [&](std::error_code ec) {
    if (ec) {
      out.client_hs = ec;
      out.client_done = true;
      return;
    }
    client.async_handshake(asio::ssl::stream_base::client, [&](std::error_code hs) {
      out.client_hs = hs;
      if (hs) {
        out.client_error = handshake_error(client, hs, "orchestrator").message;
        std::error_code ignored;
        client.lowest_layer().close(ignored);
        out.client_done = true;
        return;
      }
      asio::async_write(client, asio::buffer(ping), [&](std::error_code wec, std::size_t) {
        if (wec) {
          out.client_io = wec;
          out.client_done = true;
          return;
        }
        asio::async_read(client, asio::buffer(cbuf), [&](std::error_code rec, std::size_t n) {
          out.client_io = rec;
          out.client_got.assign(cbuf.data(), n);
          out.client_done = true;
        });
      });
    });
  });

  io.run_for(std::chrono::seconds(10));
  return out;
}

void require_rejected_before_protocol(const Outcome& o) {
  INFO("server: " << o.server_hs.message() << " | " << o.server_error);
  INFO("client: " << o.client_hs.message() << " / " << o.client_io.message() << " | " << o.client_error);
  REQUIRE_FALSE(o.timed_out());
  CHECK(o.server_hs);                // the server's handshake failed...
  CHECK(o.read_callbacks == 0);      // ...so its protocol layer never ran
  CHECK(o.protocol_bytes == 0);
  CHECK(o.client_got.empty());       // and the client never got an answer
  CHECK_FALSE(o.server_saw.has_value());
}

/// A TLS 1.3 client context with no certificate that trusts `ca_pem`.
asio::ssl::context certless_client(const std::string& ca_pem) {
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_3_VERSION);
  ctx.add_certificate_authority(asio::buffer(ca_pem));
  ctx.set_verify_mode(asio::ssl::verify_peer);
  return ctx;
}

/// A CSR for `subject_key`'s public key but signed by `signer` — its
/// self-signature cannot verify.
std::string forged_csr(const std::string& subject_key_pem, const std::string& signer_key_pem) {
  auto read_key = [](const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* k = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    return k;
  };
  EVP_PKEY* subject = read_key(subject_key_pem);
  EVP_PKEY* signer = read_key(signer_key_pem);
  X509_REQ* req = X509_REQ_new();
  X509_NAME* name = X509_REQ_get_subject_name(req);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("forged"), -1, -1, 0);
  X509_REQ_set_pubkey(req, subject);
  X509_REQ_sign(req, signer, EVP_sha256());
  BIO* out = BIO_new(BIO_s_mem());
  PEM_write_bio_X509_REQ(out, req);
  char* data = nullptr;
  long n = BIO_get_mem_data(out, &data);
  std::string pem(data, static_cast<std::size_t>(n));
  BIO_free(out);
  X509_REQ_free(req);
  EVP_PKEY_free(subject);
  EVP_PKEY_free(signer);
  return pem;
}

X509* read_cert(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return x;
}

/// X509_verify_cert of `leaf` with `ca` as the only trust anchor.
bool x509_verifies(const std::string& ca_pem, const std::string& leaf_pem) {
  X509* ca = read_cert(ca_pem);
  X509* leaf = read_cert(leaf_pem);
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, leaf, nullptr);
  const bool ok = X509_verify_cert(ctx) == 1;
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_free(leaf);
  X509_free(ca);
  return ok;
}

}  // namespace

// ================================================================ the CA
TEST_CASE("fleet CA: create, load, refuse overwrite, key mode 0600", "[tls]") {
  TempDir tmp;
  const fs::path dir = tmp.path / "ca";
  FleetCa ca = make_ca(dir);

  struct stat st {};
  REQUIRE(::stat((dir / "ca.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  // Exactly the two files: no temporary left behind.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"ca.crt", "ca.key"});
  CHECK(slurp(dir / "ca.crt") == ca.ca_cert_pem());
  CHECK(ca.ca_fingerprint_sha256().size() == 64);

  SECTION("load round trip") {
    FleetCa loaded = must(FleetCa::load(dir));
    CHECK(loaded.ca_cert_pem() == ca.ca_cert_pem());
    CHECK(loaded.ca_fingerprint_sha256() == ca.ca_fingerprint_sha256());
    // The loaded CA signs with the same key: its certificates verify against the original.
    const Device d = enroll_device(loaded, "cam-1");
    CHECK(verify_device_cert(ca.ca_cert_pem(), d.cert_pem).ok());
  }
  SECTION("refuses to overwrite an existing CA") {
    const std::string key_before = slurp(dir / "ca.key");
    auto again = FleetCa::create(dir);
    REQUIRE_FALSE(again.ok());
    CHECK(contains(again.error().message, "ca.key"));
    CHECK(contains(again.error().message, "refusing to overwrite"));
    CHECK(slurp(dir / "ca.key") == key_before);
    CHECK(slurp(dir / "ca.crt") == ca.ca_cert_pem());
  }
  SECTION("refuses when only ca.crt exists") {
    fs::remove(dir / "ca.key");
    auto again = FleetCa::create(dir);
    REQUIRE_FALSE(again.ok());
    CHECK(contains(again.error().message, "ca.crt"));
  }
  SECTION("a key that does not match the certificate is refused") {
    TempDir other;
    (void)make_ca(other.path / "ca");
    fs::copy_file(other.path / "ca" / "ca.key", dir / "ca.key", fs::copy_options::overwrite_existing);
    ::chmod((dir / "ca.key").c_str(), 0600);
    auto r = FleetCa::load(dir);
    REQUIRE_FALSE(r.ok());
    CHECK(contains(r.error().message, "does not match"));
    CHECK(contains(r.error().message, "ca.key"));
  }
  SECTION("a key readable by others is refused") {
    ::chmod((dir / "ca.key").c_str(), 0644);
    auto r = FleetCa::load(dir);
    REQUIRE_FALSE(r.ok());
    CHECK(contains(r.error().message, "0644"));
  }
  SECTION("a device certificate is not a CA") {
    TempDir fake;
    const Device d = enroll_device(ca, "cam-1");
    fs::create_directories(fake.path);
    std::ofstream(fake.path / "ca.crt") << d.cert_pem;
    std::ofstream(fake.path / "ca.key") << d.kc.key_pem;
    ::chmod((fake.path / "ca.key").c_str(), 0600);
    auto r = FleetCa::load(fake.path);
    REQUIRE_FALSE(r.ok());
    CHECK(contains(r.error().message, "not a CA certificate"));
  }
  SECTION("missing directory names the path") {
    auto r = FleetCa::load(tmp.path / "nowhere");
    REQUIRE_FALSE(r.ok());
    CHECK(contains(r.error().message, "nowhere/ca.key"));
  }
}

TEST_CASE("fleet CA: device certificates", "[tls]") {
  TempDir tmp;
  FleetCa ca = make_ca(tmp.path / "a");
  FleetCa other = make_ca(tmp.path / "b");
  const Device d = enroll_device(ca, "jetson-07");

  SECTION("verifies against its CA and not another") {
    CHECK(x509_verifies(ca.ca_cert_pem(), d.cert_pem));
    CHECK_FALSE(x509_verifies(other.ca_cert_pem(), d.cert_pem));
    auto id = must(verify_device_cert(ca.ca_cert_pem(), d.cert_pem));
    CHECK(id.common_name == "jetson-07");
    CHECK(id.fingerprint_sha256 == must(fingerprint_sha256(d.cert_pem)));
    auto bad = verify_device_cert(other.ca_cert_pem(), d.cert_pem);
    REQUIRE_FALSE(bad.ok());
    CHECK(contains(bad.error().message, "not issued by this fleet's CA"));
    CHECK(contains(bad.error().message, "jetson-07"));
  }
  SECTION("carries CN = device name, clientAuth, CA:FALSE") {
    CHECK(must(cert_common_name(d.cert_pem)) == "jetson-07");
    X509* x = read_cert(d.cert_pem);
    REQUIRE(x != nullptr);
    CHECK(X509_check_ca(x) == 0);
    CHECK((X509_get_extended_key_usage(x) & XKU_SSL_CLIENT) != 0);
    CHECK((X509_get_extended_key_usage(x) & XKU_SSL_SERVER) == 0);
    X509_free(x);
  }
  SECTION("the CA ignores the CSR's own subject") {
    const KeyAndCsr kc = must(make_key_and_csr("claims-to-be-admin"));
    const std::string cert = must(ca.issue_device_cert(kc.csr_pem, "sensor-2", 30));
    CHECK(must(cert_common_name(cert)) == "sensor-2");
  }
  SECTION("serials differ") {
    const Device d2 = enroll_device(ca, "jetson-07");
    CHECK(must(fingerprint_sha256(d2.cert_pem)) != must(fingerprint_sha256(d.cert_pem)));
  }
  SECTION("a server certificate is not a device certificate") {
    const CertAndKey srv = must(ca.issue_server_cert({"orchestrator.local", "10.0.0.5"}));
    auto r = verify_device_cert(ca.ca_cert_pem(), srv.cert_pem);
    REQUIRE_FALSE(r.ok());
    CHECK(contains(r.error().message, "rejected"));
  }
  SECTION("a CSR whose signature does not verify is refused") {
    const KeyAndCsr a = must(make_key_and_csr("a"));
    const KeyAndCsr b = must(make_key_and_csr("b"));
    auto r = ca.issue_device_cert(forged_csr(a.key_pem, b.key_pem), "cam-9", 30);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == fleetdl::Errc::corrupt);
    CHECK(contains(r.error().message, "signature does not verify"));
    CHECK(contains(r.error().message, "cam-9"));
  }
  SECTION("an oversized CSR is refused before parsing") {
    auto r = ca.issue_device_cert(std::string(kMaxCsrPemBytes + 1, 'A'), "cam-9", 30);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == fleetdl::Errc::limit_exceeded);
  }
  SECTION("garbage is not a CSR") {
    auto r = ca.issue_device_cert("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                                  "cam-9", 30);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == fleetdl::Errc::bad_magic);
  }
  SECTION("bad device names are refused") {
    for (const std::string& bad : {std::string(), std::string("-lead"), std::string("has space"), std::string("a/b"),
                                  std::string("x\ny"), std::string("CN=x,O=y"), std::string(kMaxDeviceNameBytes + 1, 'x'),
                                  std::string("na\xc3\xafve")}) {
      INFO("name: " << bad);
      auto r = ca.issue_device_cert(d.kc.csr_pem, bad, 30);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == fleetdl::Errc::invalid_argument);
      CHECK_FALSE(make_key_and_csr(bad).ok());
      CHECK_FALSE(is_valid_device_name(bad));
    }
    CHECK(is_valid_device_name(std::string(kMaxDeviceNameBytes, 'x')));
    CHECK(is_valid_device_name("rpi4.lab_2-b"));
  }
  SECTION("validity out of range is refused") {
    CHECK_FALSE(ca.issue_device_cert(d.kc.csr_pem, "cam-1", 0).ok());
    CHECK_FALSE(ca.issue_device_cert(d.kc.csr_pem, "cam-1", kMaxCertDays + 1).ok());
  }
  SECTION("server names are validated") {
    CHECK_FALSE(ca.issue_server_cert({"evil,IP:1.2.3.4"}).ok());
    CHECK_FALSE(ca.issue_server_cert({"bad name"}).ok());
    CHECK(ca.issue_server_cert({"::1", "host-1.example"}).ok());
  }
}

TEST_CASE("enrollment tokens: generate, encode, decode", "[tls]") {
  const EnrollmentToken t = must(generate_token());
  CHECK(t.identity.size() == 20);
  CHECK(t.identity.rfind("tok-", 0) == 0);
  CHECK(t.secret.size() == kTokenSecretBytes);
  const std::string text = encode_token(t);
  const EnrollmentToken back = must(decode_token(text));
  CHECK(back.identity == t.identity);
  CHECK(back.secret == t.secret);
  CHECK(must(generate_token()).identity != t.identity);
  for (const char* bad : {"", "tok-1", "tok-1:zz", "tok 1:00112233445566778899aabbccddeeff", ":00112233445566778899aabbccddeeff",
                          "tok-1:0011", "tok-1:00112233445566778899aabbccddeef"}) {
    INFO(bad);
    CHECK_FALSE(decode_token(bad).ok());
  }
}

// ================================================================ handshakes
TEST_CASE("fleet TLS: only fleet certificates reach the protocol layer", "[tls]") {
  TempDir tmp;
  FleetCa ca = make_ca(tmp.path / "fleet");
  FleetCa foreign = make_ca(tmp.path / "foreign");
  const CertAndKey server_cert = must(ca.issue_server_cert({"localhost"}));
  auto server_ctx = must(make_fleet_server_context(ca, server_cert));

  SECTION("(a) a valid device certificate: handshake, bytes, CN and fingerprint") {
    const Device d = enroll_device(ca, "cam-3");
    auto client_ctx = must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "127.0.0.1"));
    const Outcome o = exchange(server_ctx, client_ctx, Listener::fleet);
    INFO(o.server_hs.message() << " | " << o.server_error << " | " << o.client_hs.message() << " | " << o.client_error);
    REQUIRE_FALSE(o.timed_out());
    CHECK_FALSE(o.server_hs);
    CHECK_FALSE(o.client_hs);
    CHECK_FALSE(o.client_io);
    CHECK(o.protocol_bytes == 4);
    CHECK(o.client_got == "pong");
    REQUIRE(o.server_saw.has_value());
    CHECK(o.server_saw->common_name == "cam-3");
    CHECK(o.server_saw->fingerprint_sha256 == must(fingerprint_sha256(d.cert_pem)));
  }
  SECTION("(a') the client also accepts the server by DNS name") {
    const Device d = enroll_device(ca, "cam-3");
    auto client_ctx = must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "localhost"));
    const Outcome o = exchange(server_ctx, client_ctx, Listener::fleet);
    REQUIRE_FALSE(o.timed_out());
    CHECK_FALSE(o.client_hs);
    CHECK(o.client_got == "pong");
  }
  SECTION("(b) a client without a certificate is rejected") {
    auto client_ctx = certless_client(ca.ca_cert_pem());
    const Outcome o = exchange(server_ctx, client_ctx, Listener::fleet);
    require_rejected_before_protocol(o);
    CHECK(contains(o.server_error, "peer presented no certificate"));
  }
  SECTION("(c) a certificate from another CA is rejected") {
    const Device d = enroll_device(foreign, "cam-3");
    auto client_ctx = must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "127.0.0.1"));
    const Outcome o = exchange(server_ctx, client_ctx, Listener::fleet);
    require_rejected_before_protocol(o);
    CHECK(contains(o.server_error, "peer certificate 'cam-3' not issued by this fleet's CA"));
  }
  SECTION("(c') the fleet's own server certificate is not a client certificate") {
    auto client_ctx = must(make_fleet_client_context(ca.ca_cert_pem(), server_cert.cert_pem, server_cert.key_pem, "127.0.0.1"));
    const Outcome o = exchange(server_ctx, client_ctx, Listener::fleet);
    require_rejected_before_protocol(o);
    CHECK(contains(o.server_error, "rejected"));
  }
  SECTION("(d) a TLS 1.2-only client is rejected") {
    const Device d = enroll_device(ca, "cam-3");
    auto client_ctx = must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "127.0.0.1"));
    SSL_CTX_set_min_proto_version(client_ctx.native_handle(), TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(client_ctx.native_handle(), TLS1_2_VERSION);
    const Outcome o = exchange(server_ctx, client_ctx, Listener::fleet);
    require_rejected_before_protocol(o);
    CHECK(o.client_hs);  // TLS 1.2 fails on the client too: no ServerHello it accepts
    CHECK(contains(o.server_error, "TLS 1.3"));
  }
  SECTION("(f) the client rejects a server whose certificate comes from another CA") {
    const CertAndKey foreign_server = must(foreign.issue_server_cert({"localhost"}));
    auto foreign_ctx = must(make_fleet_server_context(foreign, foreign_server));
    const Device d = enroll_device(ca, "cam-3");
    auto client_ctx = must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "127.0.0.1"));
    const Outcome o = exchange(foreign_ctx, client_ctx, Listener::fleet);
    REQUIRE_FALSE(o.timed_out());
    CHECK(o.client_hs);
    CHECK(contains(o.client_error, "server certificate 'localhost' not issued by this fleet's CA"));
    CHECK(contains(o.server_error, "the peer rejected our certificate"));
    CHECK(o.read_callbacks == 0);
    CHECK(o.protocol_bytes == 0);
  }
  SECTION("(f') the client rejects a fleet server certificate for another name") {
    const Device d = enroll_device(ca, "cam-3");
    auto client_ctx = must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "10.9.8.7"));
    const Outcome o = exchange(server_ctx, client_ctx, Listener::fleet);
    REQUIRE_FALSE(o.timed_out());
    CHECK(o.client_hs);
    CHECK(contains(o.client_error, "IP address mismatch"));
    CHECK(o.protocol_bytes == 0);
  }
  SECTION("(f'') a device certificate cannot act as a server") {
    const Device d = enroll_device(ca, "cam-3");
    auto impostor = must(make_fleet_server_context(ca, CertAndKey{d.cert_pem, d.kc.key_pem}));
    auto client_ctx = must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "127.0.0.1"));
    const Outcome o = exchange(impostor, client_ctx, Listener::fleet);
    REQUIRE_FALSE(o.timed_out());
    CHECK(o.client_hs);
    CHECK(o.protocol_bytes == 0);
  }
}

TEST_CASE("enrollment TLS: a one-time token, checked in the handshake", "[tls]") {
  // The lookup consumes the token the way the orchestrator's SQLite lookup will.
  std::map<std::string, std::vector<std::uint8_t>> outstanding;
  int lookups = 0;
  PskLookup one_time = [&](std::string_view identity) -> std::optional<std::vector<std::uint8_t>> {
    ++lookups;
    auto it = outstanding.find(std::string(identity));
    if (it == outstanding.end()) return std::nullopt;
    auto secret = it->second;
    outstanding.erase(it);
    return secret;
  };
  auto server_ctx = must(make_enroll_server_context(one_time));
  const EnrollmentToken token = must(generate_token());
  outstanding[token.identity] = token.secret;

  SECTION("(e) valid token: handshake, bytes; the same token a second time fails") {
    auto client_ctx = must(make_enroll_client_context(must(decode_token(encode_token(token)))));
    const Outcome first = exchange(server_ctx, client_ctx, Listener::enroll);
    INFO(first.server_hs.message() << " | " << first.server_error << " | " << first.client_hs.message());
    REQUIRE_FALSE(first.timed_out());
    CHECK_FALSE(first.server_hs);
    CHECK_FALSE(first.client_hs);
    CHECK(first.protocol_bytes == 4);
    CHECK(first.client_got == "pong");
    CHECK(first.enrolled_identity == token.identity);
    CHECK(outstanding.empty());

    auto again_ctx = must(make_enroll_client_context(token));
    const Outcome second = exchange(server_ctx, again_ctx, Listener::enroll);
    require_rejected_before_protocol(second);
    CHECK(contains(second.server_error, "enrollment token '" + token.identity + "' rejected (unknown or already used)"));
    CHECK(second.enrolled_identity.empty());
    CHECK(lookups == 2);
  }
  SECTION("(e) a HelloRetryRequest does not ask for the token twice") {
    // The client's first key share (X25519) is not one the server accepts, so
    // the server asks again; the second ClientHello must reuse the first lookup.
    SSL_CTX_set1_groups_list(server_ctx.native_handle(), "P-256");
    auto client_ctx = must(make_enroll_client_context(token));
    SSL_CTX_set1_groups_list(client_ctx.native_handle(), "X25519:P-256");
    const Outcome o = exchange(server_ctx, client_ctx, Listener::enroll);
    INFO(o.server_hs.message() << " | " << o.server_error << " | " << o.client_hs.message());
    REQUIRE_FALSE(o.timed_out());
    CHECK_FALSE(o.server_hs);
    CHECK(o.client_got == "pong");
    CHECK(o.enrolled_identity == token.identity);
    CHECK(lookups == 1);
  }
  SECTION("(e) wrong secret fails") {
    EnrollmentToken wrong = token;
    wrong.secret[0] ^= 0x01;
    auto client_ctx = must(make_enroll_client_context(wrong));
    const Outcome o = exchange(server_ctx, client_ctx, Listener::enroll);
    require_rejected_before_protocol(o);
    CHECK(contains(o.server_error, "rejected (wrong secret)"));
  }
  SECTION("(e) unknown identity fails") {
    const EnrollmentToken unknown = must(generate_token());
    auto client_ctx = must(make_enroll_client_context(unknown));
    const Outcome o = exchange(server_ctx, client_ctx, Listener::enroll);
    require_rejected_before_protocol(o);
    CHECK(contains(o.server_error, "rejected (unknown or already used)"));
    CHECK(outstanding.size() == 1);  // the real token is untouched
  }
  SECTION("(e) a client offering no token fails") {
    asio::ssl::context plain(asio::ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(plain.native_handle(), TLS1_3_VERSION);
    plain.set_verify_mode(asio::ssl::verify_none);
    const Outcome o = exchange(server_ctx, plain, Listener::enroll);
    require_rejected_before_protocol(o);
    CHECK(contains(o.server_error, "offered none"));
    CHECK(lookups == 0);
  }
  SECTION("enrollment end to end: token, CSR, certificate, fleet handshake") {
    TempDir tmp;
    FleetCa ca = make_ca(tmp.path / "ca");
    auto client_ctx = must(make_enroll_client_context(token));
    const Outcome o = exchange(server_ctx, client_ctx, Listener::enroll);
    REQUIRE(o.enrolled_identity == token.identity);
    // (The CSR and certificate travel inside that channel in the wire protocol.)
    const Device d = enroll_device(ca, "pi-zero-4");
    const CertAndKey srv = must(ca.issue_server_cert({}));
    auto fleet_server = must(make_fleet_server_context(ca, srv));
    auto fleet_client = must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "127.0.0.1"));
    const Outcome f = exchange(fleet_server, fleet_client, Listener::fleet);
    REQUIRE(f.server_saw.has_value());
    CHECK(f.server_saw->common_name == "pi-zero-4");
  }
}

TEST_CASE("TLS contexts: TLS 1.3 floor, no tickets, no session cache", "[tls]") {
  TempDir tmp;
  FleetCa ca = make_ca(tmp.path / "ca");
  const Device d = enroll_device(ca, "cam-1");
  std::vector<asio::ssl::context> ctxs;
  ctxs.push_back(must(make_fleet_server_context(ca, must(ca.issue_server_cert({})))));
  ctxs.push_back(must(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "127.0.0.1")));
  ctxs.push_back(must(make_enroll_server_context([](std::string_view) { return std::optional<std::vector<std::uint8_t>>{}; })));
  ctxs.push_back(must(make_enroll_client_context(must(generate_token()))));
  for (auto& c : ctxs) {
    SSL_CTX* h = c.native_handle();
    CHECK(SSL_CTX_get_min_proto_version(h) == TLS1_3_VERSION);
    CHECK(SSL_CTX_get_num_tickets(h) == 0);
    CHECK((SSL_CTX_get_options(h) & SSL_OP_NO_TICKET) != 0);
    CHECK(SSL_CTX_get_session_cache_mode(h) == SSL_SESS_CACHE_OFF);
  }
  CHECK(SSL_CTX_get_verify_mode(ctxs[0].native_handle()) == (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT));
  CHECK(SSL_CTX_get_verify_mode(ctxs[1].native_handle()) == SSL_VERIFY_PEER);
}

TEST_CASE("TLS contexts refuse bad inputs", "[tls]") {
  TempDir tmp;
  FleetCa ca = make_ca(tmp.path / "ca");
  const Device d = enroll_device(ca, "cam-1");
  const Device e = enroll_device(ca, "cam-2");
  auto mismatch = make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, e.kc.key_pem, "127.0.0.1");
  REQUIRE_FALSE(mismatch.ok());
  CHECK(contains(mismatch.error().message, "does not match"));
  CHECK_FALSE(make_fleet_client_context(ca.ca_cert_pem(), d.cert_pem, d.kc.key_pem, "").ok());
  CHECK_FALSE(make_fleet_client_context("not a cert", d.cert_pem, d.kc.key_pem, "127.0.0.1").ok());
  CHECK_FALSE(make_enroll_server_context(PskLookup{}).ok());
  CHECK_FALSE(make_enroll_client_context(EnrollmentToken{"tok-1", {1, 2, 3}}).ok());
}
