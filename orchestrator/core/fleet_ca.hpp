// orchestrator/core/fleet_ca.hpp — the fleet certificate authority, enrollment
// tokens and the mutual-TLS 1.3 contexts the orchestrator and agents use.
//
// Trust model (docs/fleet-security.md has the long form):
//   * The orchestrator owns one fleet CA (EC P-256, self-signed, pathlen 0) in a
//     directory: ca.key (mode 0600) and ca.crt. It issues a clientAuth
//     certificate per device at enrollment and a serverAuth certificate for its
//     own fleet listener. Nothing else is trusted: no system roots, ever.
//   * Enrollment runs over TLS 1.3 with an external PSK: the PSK identity is a
//     one-time token's identity and the key its 32-byte secret. The caller's
//     lookup decides (and, in the orchestrator, consumes) the token, so an
//     unknown, wrong-secret or reused token fails the handshake itself.
//   * The fleet listener runs TLS 1.3 only, demands a client certificate and
//     verifies it against the fleet CA alone; the agent verifies the server's
//     certificate against the same CA and the expected name or IP.
// In both cases a peer that fails never completes the handshake, so the
// protocol layer (which starts reading only after a successful handshake)
// never sees a byte from it.
//
// Every fallible call returns Result<T>; messages name the culprit (a path, a
// device name, "certificate not issued by this fleet's CA", "enrollment token
// rejected"). Asio is used standalone (-DASIO_STANDALONE) with OpenSSL 3.
#pragma once

#include "fleetdl/core/error.hpp"

#include <asio/ssl.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace fleetdl::core {

// ---------------------------------------------------------------- limits
/// Longest device name (certificate CN) accepted; names are [A-Za-z0-9._-],
/// starting with a letter or digit.
inline constexpr std::size_t kMaxDeviceNameBytes = 64;
/// Largest CSR PEM accepted by FleetCa::issue_device_cert, checked before parsing.
inline constexpr std::size_t kMaxCsrPemBytes = 8 * 1024;
/// Largest certificate or key PEM accepted anywhere, checked before parsing.
inline constexpr std::size_t kMaxCertPemBytes = 16 * 1024;
/// Longest enrollment-token identity; identities are [A-Za-z0-9._-].
inline constexpr std::size_t kMaxTokenIdentityBytes = 64;
/// Size of the secret generate_token() draws (the TLS 1.3 external PSK).
inline constexpr std::size_t kTokenSecretBytes = 32;
/// Longest validity of an issued certificate, in days (never past the CA's own end).
inline constexpr int kMaxCertDays = 3650;

// ---------------------------------------------------------------- values
/// A private key and a certificate, both PEM (the key unencrypted PKCS#8).
struct CertAndKey {
  std::string cert_pem;
  std::string key_pem;
};

/// What an agent generates before enrollment: its private key and a CSR.
struct KeyAndCsr {
  std::string key_pem;
  std::string csr_pem;
};

/// A one-time enrollment token: the PSK identity and the PSK itself.
struct EnrollmentToken {
  std::string identity;              ///< "tok-" + 16 lowercase hex digits
  std::vector<std::uint8_t> secret;  ///< kTokenSecretBytes random bytes
};

/// The verified identity of a TLS peer, read from its certificate.
struct PeerIdentity {
  std::string common_name;         ///< the device name (certificate CN)
  std::string fingerprint_sha256;  ///< SHA-256 of the DER certificate, 64 lowercase hex digits
};

// ---------------------------------------------------------------- the CA
/// The orchestrator's fleet certificate authority. Holds the CA key in memory
/// once created or loaded; move-only.
class FleetCa {
 public:
  /// Creates `dir` (mode 0700) if missing, generates an EC P-256 key and a
  /// self-signed CA certificate (CA:TRUE, pathlen 0, keyCertSign|cRLSign,
  /// 10 years, random 128-bit serial) and writes dir/ca.key (0600) and
  /// dir/ca.crt, each through a temporary file and a no-replace link, so a
  /// failure leaves no half-written file. Refuses if either file exists.
  static Result<FleetCa> create(const std::filesystem::path& dir);

  /// Loads dir/ca.key and dir/ca.crt and checks: the key file is not readable
  /// by group or others, the certificate is a self-signed CA certificate whose
  /// signature verifies, and the key matches it.
  static Result<FleetCa> load(const std::filesystem::path& dir);

  /// Issues a device (client) certificate for the public key in `csr_pem`.
  /// Checks, in order: PEM size <= kMaxCsrPemBytes, `device_name` charset and
  /// length, that the CSR parses and its self-signature verifies, and the key
  /// type (EC P-256/P-384, Ed25519, or RSA >= 2048). The subject is CN=device
  /// name (the CSR's own subject is ignored); clientAuth only, CA:FALSE, random
  /// serial, `days` in [1, kMaxCertDays] clamped to the CA's expiry.
  Result<std::string> issue_device_cert(std::string_view csr_pem, std::string_view device_name,
                                        int days) const;

  /// Issues the orchestrator's own fleet-listener certificate with a fresh
  /// P-256 key: serverAuth only, SAN IP:127.0.0.1 plus every entry of `names`
  /// (each an IPv4/IPv6 address or a DNS name), CN = the first name or
  /// "fleetdl-orchestrator".
  Result<CertAndKey> issue_server_cert(const std::vector<std::string>& names, int days = 825) const;

  /// The CA certificate, PEM; this is what agents trust.
  const std::string& ca_cert_pem() const;
  /// SHA-256 fingerprint of the CA certificate (64 lowercase hex digits).
  const std::string& ca_fingerprint_sha256() const;

  FleetCa(FleetCa&&) noexcept;
  FleetCa& operator=(FleetCa&&) noexcept;
  FleetCa(const FleetCa&) = delete;
  FleetCa& operator=(const FleetCa&) = delete;
  ~FleetCa();

  struct State;  // OpenSSL objects; defined in fleet_ca.cpp

 private:
  explicit FleetCa(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

// ---------------------------------------------------------------- certificates
/// Agent side: a fresh EC P-256 key and a CSR with CN=device_name.
Result<KeyAndCsr> make_key_and_csr(std::string_view device_name);

/// SHA-256 over the DER encoding of the certificate, 64 lowercase hex digits.
Result<std::string> fingerprint_sha256(std::string_view cert_pem);

/// The certificate's single subject CN (an error if absent or repeated).
Result<std::string> cert_common_name(std::string_view cert_pem);

/// The subject CN of a certificate request (the name an enrolling agent asks
/// for), after checking the request's signature and the device-name rule.
/// The orchestrator still issues the certificate through issue_device_cert().
Result<std::string> csr_common_name(std::string_view csr_pem);

/// Verifies (X509_verify_cert, this CA as the only trust anchor, current time,
/// purpose sslclient) that `cert_pem` is a device certificate issued by the CA
/// in `ca_cert_pem`; returns its CN and fingerprint.
Result<PeerIdentity> verify_device_cert(std::string_view ca_cert_pem, std::string_view cert_pem);

/// Whether `name` is an acceptable device name (see kMaxDeviceNameBytes).
bool is_valid_device_name(std::string_view name);

// ---------------------------------------------------------------- tokens
/// A fresh one-time token: identity "tok-" + 16 hex digits, 32 random bytes.
Result<EnrollmentToken> generate_token();
/// The printable form the CLI shows and the agent takes: "identity:hexsecret".
std::string encode_token(const EnrollmentToken& token);
/// Parses encode_token's form; strict (identity charset, secret 16..64 bytes of hex).
Result<EnrollmentToken> decode_token(std::string_view text);

// ---------------------------------------------------------------- TLS contexts
/// The orchestrator's fleet listener: TLS 1.3 only, presents `server`
/// (from FleetCa::issue_server_cert), requires a client certificate and
/// verifies it against this CA only (verify_peer | verify_fail_if_no_peer_cert).
/// No session tickets or cache: every connection authenticates in full.
Result<asio::ssl::context> make_fleet_server_context(const FleetCa& ca, const CertAndKey& server);

/// An agent's fleet connection: TLS 1.3 only, presents the device certificate
/// and key, verifies the server against `ca_cert_pem` only and checks the
/// server certificate names `expected_server` (an IP address or a DNS name).
Result<asio::ssl::context> make_fleet_client_context(std::string_view ca_cert_pem,
                                                     std::string_view device_cert_pem,
                                                     std::string_view device_key_pem,
                                                     std::string_view expected_server);

/// Looks an enrollment-token identity up: its secret, or nullopt to reject.
/// Called on the handshake's thread during the ClientHello; the orchestrator's
/// implementation consumes the token atomically, so a token works once.
using PskLookup =
    std::function<std::optional<std::vector<std::uint8_t>>(std::string_view identity)>;

/// The orchestrator's enrollment listener: TLS 1.3, external PSK only
/// (TLS_AES_128_GCM_SHA256, psk_dhe_ke), no certificates. Identities that are
/// not [A-Za-z0-9._-]{1,64} are rejected without calling `lookup`.
Result<asio::ssl::context> make_enroll_server_context(PskLookup lookup);

/// An agent's enrollment connection with the token (identity + secret).
Result<asio::ssl::context> make_enroll_client_context(const EnrollmentToken& token);

// ---------------------------------------------------------------- after a handshake
/// After a successful fleet handshake: the peer's verified CN and fingerprint.
/// Errors if the handshake is not finished, the peer sent no certificate or
/// its verification did not succeed, or the CN is not a valid device name.
Result<PeerIdentity> verified_peer(SSL* ssl);
template <class Stream>
Result<PeerIdentity> verified_peer(Stream& stream) {
  return verified_peer(stream.native_handle());
}

/// After a successful enrollment handshake on the server: the token identity
/// the agent used (not_found if no PSK was accepted on this connection).
Result<std::string> enrollment_identity(SSL* ssl);
template <class Stream>
Result<std::string> enrollment_identity(Stream& stream) {
  return enrollment_identity(stream.native_handle());
}

/// Turns a failed handshake into one line naming the cause, e.g.
/// "127.0.0.1:40312: TLS handshake failed: peer certificate 'cam-3' not issued
/// by this fleet's CA" or "...: enrollment token 'tok-…' rejected (unknown or
/// already used)". `peer` is a label for the other end (an address).
Error handshake_error(SSL* ssl, const std::error_code& ec, std::string_view peer);
template <class Stream>
Error handshake_error(Stream& stream, const std::error_code& ec, std::string_view peer) {
  return handshake_error(stream.native_handle(), ec, peer);
}

}  // namespace fleetdl::core
