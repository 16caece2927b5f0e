// orchestrator/core/fleet_ca.cpp — the fleet CA, enrollment tokens and the
// TLS 1.3 contexts (see fleet_ca.hpp and docs/fleet-security.md).
//
// Every OpenSSL object lives in a unique_ptr with its *_free as deleter. The
// OpenSSL error queue is drained into the message of the Result that reports
// a failure, so no stale error leaks into a later call.
#include "fleet_ca.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <utility>

namespace fleetdl::core {

namespace {

// ---------------------------------------------------------------- RAII
template <auto Fn>
struct OsslDeleter {
  template <class T>
  void operator()(T* p) const noexcept {
    Fn(p);
  }
};
using BioPtr = std::unique_ptr<BIO, OsslDeleter<BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, OsslDeleter<X509_free>>;
using ReqPtr = std::unique_ptr<X509_REQ, OsslDeleter<X509_REQ_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, OsslDeleter<EVP_PKEY_free>>;
using StorePtr = std::unique_ptr<X509_STORE, OsslDeleter<X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OsslDeleter<X509_STORE_CTX_free>>;
using BnPtr = std::unique_ptr<BIGNUM, OsslDeleter<BN_free>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, OsslDeleter<X509_EXTENSION_free>>;
using NamePtr = std::unique_ptr<X509_NAME, OsslDeleter<X509_NAME_free>>;
using GenNamesPtr = std::unique_ptr<GENERAL_NAMES, OsslDeleter<GENERAL_NAMES_free>>;
using GenNamePtr = std::unique_ptr<GENERAL_NAME, OsslDeleter<GENERAL_NAME_free>>;
using OctetPtr = std::unique_ptr<ASN1_OCTET_STRING, OsslDeleter<ASN1_OCTET_STRING_free>>;
using Ia5Ptr = std::unique_ptr<ASN1_IA5STRING, OsslDeleter<ASN1_IA5STRING_free>>;
using SessionPtr = std::unique_ptr<SSL_SESSION, OsslDeleter<SSL_SESSION_free>>;

/// Closes a POSIX file descriptor.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// ---------------------------------------------------------------- errors
/// Drains the OpenSSL error queue into "; "-joined text ("" if empty).
std::string drain_openssl_errors() {
  std::string out;
  unsigned long e = 0;
  while ((e = ERR_get_error()) != 0) {
    std::array<char, 256> buf{};
    ERR_error_string_n(e, buf.data(), buf.size());
    if (!out.empty()) out += "; ";
    out += buf.data();
  }
  return out;
}

/// An Error whose message ends with the drained OpenSSL error queue, if any.
Error ossl_error(Errc code, std::string what) {
  std::string detail = drain_openssl_errors();
  if (!detail.empty()) what += " (" + detail + ")";
  return make_error(code, std::move(what));
}

std::string errno_text(int e) { return std::strerror(e); }

// PEM readers must never prompt on a terminal for a pass phrase.
int no_password(char*, int, int, void*) { return 0; }

std::string to_hex(const unsigned char* p, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 0xf];
  }
  return s;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool is_valid_token_identity(std::string_view id) {
  if (id.empty() || id.size() > kMaxTokenIdentityBytes) return false;
  for (char c : id)
    if (!is_name_char(c)) return false;
  return true;
}

/// Quotes untrusted text for an error message: printable ASCII kept, the rest
/// escaped, long text cut, so a hostile name cannot forge log lines.
std::string shown(std::string_view s) {
  std::string out = "'";
  std::size_t n = 0;
  for (unsigned char c : s) {
    if (++n > 80) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static constexpr char digits[] = "0123456789abcdef";
      out += "\\x";
      out += digits[c >> 4];
      out += digits[c & 0xf];
    }
  }
  return out + "'";
}

// ---------------------------------------------------------------- PEM in/out
Result<BioPtr> mem_bio(std::string_view pem) {
  if (pem.size() > static_cast<std::size_t>(INT_MAX))
    return make_error(Errc::limit_exceeded, "PEM text too large");
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return ossl_error(Errc::io_error, "BIO_new_mem_buf failed");
  return bio;
}

Result<X509Ptr> parse_cert(std::string_view pem, std::string_view what) {
  if (pem.empty()) return make_error(Errc::invalid_argument, std::string(what) + ": empty certificate");
  if (pem.size() > kMaxCertPemBytes)
    return make_error(Errc::limit_exceeded, std::string(what) + ": certificate PEM of " +
                                                std::to_string(pem.size()) + " bytes exceeds " +
                                                std::to_string(kMaxCertPemBytes));
  auto bio = mem_bio(pem);
  if (!bio) return std::move(bio).error();
  X509Ptr x(PEM_read_bio_X509(bio->get(), nullptr, no_password, nullptr));
  if (!x) return ossl_error(Errc::bad_magic, std::string(what) + ": not a PEM certificate");
  return x;
}

Result<PkeyPtr> parse_key(std::string_view pem, std::string_view what) {
  if (pem.empty()) return make_error(Errc::invalid_argument, std::string(what) + ": empty private key");
  if (pem.size() > kMaxCertPemBytes)
    return make_error(Errc::limit_exceeded, std::string(what) + ": key PEM of " +
                                                std::to_string(pem.size()) + " bytes exceeds " +
                                                std::to_string(kMaxCertPemBytes));
  auto bio = mem_bio(pem);
  if (!bio) return std::move(bio).error();
  PkeyPtr k(PEM_read_bio_PrivateKey(bio->get(), nullptr, no_password, nullptr));
  if (!k) return ossl_error(Errc::bad_magic, std::string(what) + ": not an unencrypted PEM private key");
  return k;
}

/// Reads whatever a writer put into a memory BIO.
std::string bio_text(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

Result<std::string> cert_to_pem(X509* x) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), x) != 1) return ossl_error(Errc::io_error, "PEM_write_bio_X509 failed");
  return bio_text(bio.get());
}

Result<std::string> key_to_pem(EVP_PKEY* k) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), k, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return ossl_error(Errc::io_error, "PEM_write_bio_PrivateKey failed");
  return bio_text(bio.get());
}

Result<PkeyPtr> new_p256_key() {
  PkeyPtr k(EVP_EC_gen("P-256"));
  if (!k) return ossl_error(Errc::io_error, "EC P-256 key generation failed");
  return k;
}

// ---------------------------------------------------------------- certificate facts
Result<std::string> x509_fingerprint(const X509* x) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  if (X509_digest(x, EVP_sha256(), md.data(), &len) != 1)
    return ossl_error(Errc::io_error, "X509_digest failed");
  return to_hex(md.data(), len);
}

Result<std::string> name_common_name(const X509_NAME* name) {
  int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) return make_error(Errc::not_found, "certificate subject has no CN");
  if (X509_NAME_get_index_by_NID(name, NID_commonName, idx) >= 0)
    return make_error(Errc::corrupt, "certificate subject has more than one CN");
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, data);
  if (n < 0) return ossl_error(Errc::corrupt, "certificate CN is not a valid string");
  std::string cn(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(n));
  OPENSSL_free(utf8);
  return cn;
}

Result<std::string> x509_common_name(const X509* x) { return name_common_name(X509_get_subject_name(x)); }

/// "cam-3" for messages; "(no CN)" when the CN cannot be read.
std::string cn_label(const X509* x) {
  if (x == nullptr) return "(none)";
  auto cn = x509_common_name(x);
  ERR_clear_error();
  return cn ? shown(*cn) : std::string("(no CN)");
}

/// True for the verification errors that mean "this CA did not sign it".
bool is_wrong_issuer(int err) {
  switch (err) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      return true;
    default:
      return false;
  }
}

std::string verify_failure_text(int err, const X509* cert, std::string_view role) {
  std::string who = std::string(role) + " " + cn_label(cert);
  if (is_wrong_issuer(err)) return who + " not issued by this fleet's CA";
  return who + " rejected: " + X509_verify_cert_error_string(err);
}

// ---------------------------------------------------------------- building certificates
Result<void> set_random_serial(X509* x) {
  std::array<unsigned char, 16> buf{};
  if (RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1)
    return ossl_error(Errc::io_error, "RAND_bytes failed");
  buf[0] &= 0x7f;  // a positive INTEGER of at most 16 bytes (RFC 5280 4.1.2.2)
  BnPtr bn(BN_bin2bn(buf.data(), static_cast<int>(buf.size()), nullptr));
  if (!bn) return ossl_error(Errc::io_error, "BN_bin2bn failed");
  if (BN_is_zero(bn.get())) BN_set_word(bn.get(), 1);
  if (BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(x)) == nullptr)
    return ossl_error(Errc::io_error, "BN_to_ASN1_INTEGER failed");
  return success();
}

Result<void> add_ext(X509* x, X509V3_CTX* ctx, int nid, const char* value) {
  ExtPtr ext(X509V3_EXT_nconf_nid(nullptr, ctx, nid, value));
  if (!ext || X509_add_ext(x, ext.get(), -1) != 1)
    return ossl_error(Errc::io_error, std::string("cannot add extension ") + OBJ_nid2sn(nid) + "=" + value);
  return success();
}

enum class CertKind { ca, device, server };

/// Builds and signs a certificate. `issuer` null means self-signed.
/// `extra` (may be null) is a SAN extension to add.
Result<X509Ptr> build_cert(CertKind kind, X509_NAME* subject, EVP_PKEY* subject_key, X509* issuer,
                           EVP_PKEY* issuer_key, int days, GENERAL_NAMES* san) {
  X509Ptr x(X509_new());
  if (!x) return ossl_error(Errc::io_error, "X509_new failed");
  if (X509_set_version(x.get(), X509_VERSION_3) != 1) return ossl_error(Errc::io_error, "X509_set_version failed");
  FLEETDL_TRY(set_random_serial(x.get()));
  if (X509_set_subject_name(x.get(), subject) != 1 ||
      X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer) : subject) != 1 ||
      X509_set_pubkey(x.get(), subject_key) != 1)
    return ossl_error(Errc::io_error, "cannot set certificate names or key");
  // One hour of slack for devices whose clocks run a little behind.
  if (X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(x.get()), days, 0, nullptr) == nullptr)
    return ossl_error(Errc::io_error, "cannot set certificate validity");
  if (issuer && ASN1_TIME_compare(X509_get0_notAfter(x.get()), X509_get0_notAfter(issuer)) > 0) {
    if (X509_set1_notAfter(x.get(), X509_get0_notAfter(issuer)) != 1)
      return ossl_error(Errc::io_error, "cannot clamp certificate validity");
  }

  X509V3_CTX v3;
  X509V3_set_ctx(&v3, issuer ? issuer : x.get(), x.get(), nullptr, nullptr, 0);
  switch (kind) {
    case CertKind::ca:
      FLEETDL_TRY(add_ext(x.get(), &v3, NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
      FLEETDL_TRY(add_ext(x.get(), &v3, NID_key_usage, "critical,keyCertSign,cRLSign"));
      break;
    case CertKind::device:
      FLEETDL_TRY(add_ext(x.get(), &v3, NID_basic_constraints, "critical,CA:FALSE"));
      FLEETDL_TRY(add_ext(x.get(), &v3, NID_key_usage, "critical,digitalSignature"));
      FLEETDL_TRY(add_ext(x.get(), &v3, NID_ext_key_usage, "clientAuth"));
      break;
    case CertKind::server:
      FLEETDL_TRY(add_ext(x.get(), &v3, NID_basic_constraints, "critical,CA:FALSE"));
      FLEETDL_TRY(add_ext(x.get(), &v3, NID_key_usage, "critical,digitalSignature"));
      FLEETDL_TRY(add_ext(x.get(), &v3, NID_ext_key_usage, "serverAuth"));
      break;
  }
  FLEETDL_TRY(add_ext(x.get(), &v3, NID_subject_key_identifier, "hash"));
  FLEETDL_TRY(add_ext(x.get(), &v3, NID_authority_key_identifier, "keyid:always"));
  if (san && X509_add1_ext_i2d(x.get(), NID_subject_alt_name, san, 0, X509V3_ADD_DEFAULT) != 1)
    return ossl_error(Errc::io_error, "cannot add subjectAltName");

  if (X509_sign(x.get(), issuer_key, EVP_sha256()) <= 0) return ossl_error(Errc::io_error, "X509_sign failed");
  return x;
}

Result<NamePtr> name_with_cn(std::string_view cn, const char* org) {
  NamePtr n(X509_NAME_new());
  if (!n) return ossl_error(Errc::io_error, "X509_NAME_new failed");
  const std::string cn_s(cn);
  if (org && X509_NAME_add_entry_by_txt(n.get(), "O", MBSTRING_UTF8,
                                        reinterpret_cast<const unsigned char*>(org), -1, -1, 0) != 1)
    return ossl_error(Errc::io_error, "cannot set O");
  if (X509_NAME_add_entry_by_txt(n.get(), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn_s.c_str()), -1, -1, 0) != 1)
    return ossl_error(Errc::io_error, "cannot set CN " + shown(cn));
  return n;
}

bool is_valid_dns_name(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  std::size_t label = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '.') {
      if (label == 0 || s[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && !(c == '-' && label > 0)) return false;
    if (++label > 63) return false;
  }
  return label > 0 && s.back() != '-';
}

bool is_ip_literal(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// ---------------------------------------------------------------- files
Result<std::string> read_small_file(const std::filesystem::path& p, std::size_t limit, mode_t* mode_out) {
  Fd f(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return make_error(Errc::io_error, p.string() + ": cannot open: " + errno_text(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return make_error(Errc::io_error, p.string() + ": cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) return make_error(Errc::invalid_argument, p.string() + ": not a regular file");
  if (static_cast<std::uint64_t>(st.st_size) > limit)
    return make_error(Errc::limit_exceeded, p.string() + ": " + std::to_string(st.st_size) +
                                                " bytes exceeds " + std::to_string(limit));
  if (mode_out) *mode_out = st.st_mode;
  std::string data(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::read(f.fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(Errc::io_error, p.string() + ": read failed: " + errno_text(errno));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  data.resize(got);
  return data;
}

/// Writes `data` to a fresh temporary file next to `final_path` with `mode`,
/// fsyncs it and returns its path.
Result<std::filesystem::path> write_temp(const std::filesystem::path& final_path, std::string_view data,
                                         mode_t mode) {
  std::string tmpl = final_path.string() + ".tmp.XXXXXX";
  Fd f(::mkstemp(tmpl.data()));  // created 0600
  if (f.fd < 0) return make_error(Errc::io_error, final_path.string() + ": cannot create temporary file: " + errno_text(errno));
  std::filesystem::path tmp(tmpl);
  auto fail = [&](const char* what) -> Error {
    int e = errno;
    ::unlink(tmp.c_str());
    return make_error(Errc::io_error, tmp.string() + ": " + what + ": " + errno_text(e));
  };
  if (::fchmod(f.fd, mode) != 0) return fail("fchmod failed");
  std::size_t put = 0;
  while (put < data.size()) {
    ssize_t n = ::write(f.fd, data.data() + put, data.size() - put);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write failed");
    put += static_cast<std::size_t>(n);
  }
  if (::fsync(f.fd) != 0) return fail("fsync failed");
  int fd = f.fd;
  f.fd = -1;
  if (::close(fd) != 0) return fail("close failed");
  return tmp;
}

/// Moves `tmp` to `final_path` without ever replacing an existing file:
/// link(2) fails with EEXIST if the name is taken, atomically.
Result<void> publish_no_replace(const std::filesystem::path& tmp, const std::filesystem::path& final_path) {
  if (::link(tmp.c_str(), final_path.c_str()) != 0) {
    int e = errno;
    if (e == EEXIST) return make_error(Errc::invalid_argument, final_path.string() + ": already exists; refusing to overwrite");
    return make_error(Errc::io_error, final_path.string() + ": cannot create: " + errno_text(e));
  }
  ::unlink(tmp.c_str());
  return success();
}

void fsync_dir(const std::filesystem::path& dir) {
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.fd >= 0) ::fsync(d.fd);
}

// ---------------------------------------------------------------- TLS ex_data
enum class Channel { fleet_server, fleet_client, enroll_server, enroll_client };

/// What a context we built carries for its C callbacks (SSL_CTX ex_data).
struct CtxData {
  Channel channel{};
  PskLookup lookup;           // enroll_server
  EnrollmentToken token;      // enroll_client
  ~CtxData() {
    if (!token.secret.empty()) OPENSSL_cleanse(token.secret.data(), token.secret.size());
  }
};

/// What a connection's callbacks learnt during its handshake (SSL ex_data),
/// read afterwards by enrollment_identity and handshake_error.
struct SslNotes {
  std::string token_identity;          // the PSK identity offered
  std::vector<std::uint8_t> secret;    // cached across a HelloRetryRequest
  bool psk_offered = false;
  bool psk_found = false;
  int hellos = 0;                      // ClientHellos seen (2 after a HelloRetryRequest)
  int psk_hello = 0;                   // the last ClientHello that carried a PSK
  std::string psk_rejection;           // why the lookup said no
  std::string verify_failure;          // first certificate failure, one line
  ~SslNotes() {
    if (!secret.empty()) OPENSSL_cleanse(secret.data(), secret.size());
  }
};

void free_ctx_data(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<CtxData*>(ptr); }
void free_ssl_notes(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<SslNotes*>(ptr); }

// Our own ex_data slots; index 0 ("app data") belongs to Asio.
int ctx_slot() {
  static const int idx = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_ctx_data);
  return idx;
}
int ssl_slot() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_ssl_notes);
  return idx;
}

CtxData* ctx_data(const SSL* ssl) {
  if (ssl == nullptr || ctx_slot() < 0) return nullptr;
  return static_cast<CtxData*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_slot()));
}

SslNotes* notes_of(const SSL* ssl) {
  if (ssl == nullptr || ssl_slot() < 0) return nullptr;
  return static_cast<SslNotes*>(SSL_get_ex_data(ssl, ssl_slot()));
}

/// The connection's notes, created on first use (nullptr only on OOM).
SslNotes* notes_for(SSL* ssl) {
  if (SslNotes* n = notes_of(ssl)) return n;
  if (ssl_slot() < 0) return nullptr;
  auto* n = new (std::nothrow) SslNotes();
  if (n && SSL_set_ex_data(ssl, ssl_slot(), n) != 1) {
    delete n;
    return nullptr;
  }
  return n;
}

Result<void> attach(SSL_CTX* c, std::unique_ptr<CtxData> d) {
  if (ctx_slot() < 0 || SSL_CTX_set_ex_data(c, ctx_slot(), d.get()) != 1)
    return ossl_error(Errc::io_error, "SSL_CTX_set_ex_data failed");
  d.release();  // owned by the SSL_CTX from now on (free_ctx_data)
  return success();
}

/// Shared by both fleet sides: remembers the first certificate failure of the
/// handshake so handshake_error can name the certificate and the reason.
int fleet_verify_cb(int preverify_ok, X509_STORE_CTX* sctx) {
  if (preverify_ok == 1) return 1;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (SslNotes* n = notes_for(ssl); n && n->verify_failure.empty()) {
    const bool server = SSL_is_server(ssl) == 1;
    // Name the leaf (what the peer claims to be), whichever chain element failed.
    n->verify_failure = verify_failure_text(X509_STORE_CTX_get_error(sctx), X509_STORE_CTX_get0_cert(sctx),
                                            server ? "peer certificate" : "server certificate");
  }
  return 0;
}

// TLS_AES_128_GCM_SHA256 (RFC 8446 B.4), the one suite enrollment uses.
constexpr unsigned char kEnrollSuite[2] = {0x13, 0x01};

/// A resumption-free session carrying an external PSK (RFC 8446 4.2.11).
SSL_SESSION* psk_session(SSL* ssl, const std::vector<std::uint8_t>& key) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kEnrollSuite);
  if (cipher == nullptr) return nullptr;
  SessionPtr s(SSL_SESSION_new());
  if (!s || SSL_SESSION_set1_master_key(s.get(), key.data(), key.size()) != 1 ||
      SSL_SESSION_set_cipher(s.get(), cipher) != 1 ||
      SSL_SESSION_set_protocol_version(s.get(), TLS1_3_VERSION) != 1)
    return nullptr;
  return s.release();
}

/// Server: the ClientHello offered an external PSK identity. Returning 1 with
/// *sess == nullptr means "no such PSK": the handshake then has no way to
/// authenticate (the context has no certificate) and fails with an alert.
int enroll_find_psk(SSL* ssl, const unsigned char* id, std::size_t idlen, SSL_SESSION** sess) {
  *sess = nullptr;
  CtxData* d = ctx_data(ssl);
  SslNotes* n = notes_for(ssl);
  if (d == nullptr || n == nullptr) return 0;
  const std::string_view identity(reinterpret_cast<const char*>(id), idlen);
  n->psk_hello = n->hellos;
  if (n->psk_found && identity == n->token_identity) {
    // Second ClientHello after a HelloRetryRequest: the token was already
    // consumed by the first lookup; reuse its secret rather than asking again.
    *sess = psk_session(ssl, n->secret);
    return *sess ? 1 : 0;
  }
  n->psk_offered = true;
  n->token_identity.assign(identity.substr(0, kMaxTokenIdentityBytes + 1));
  if (!is_valid_token_identity(identity)) {
    n->psk_rejection = "malformed identity";
    return 1;
  }
  std::optional<std::vector<std::uint8_t>> secret;
  try {
    secret = d->lookup(identity);
  } catch (...) {  // an exception must not unwind through OpenSSL's C frames
    n->psk_rejection = "token lookup failed";
    return 1;
  }
  if (!secret) {
    n->psk_rejection = "unknown or already used";
    return 1;
  }
  if (secret->size() < 16 || secret->size() > 64) {
    OPENSSL_cleanse(secret->data(), secret->size());
    n->psk_rejection = "stored secret has a bad size";
    return 1;
  }
  n->secret = std::move(*secret);
  n->psk_found = true;
  *sess = psk_session(ssl, n->secret);
  return *sess ? 1 : 0;
}

/// Server: counts ClientHellos, so a failure can tell "wrong secret" from
/// "the agent stopped offering the token after a HelloRetryRequest".
int enroll_count_hello(SSL* ssl, int*, void*) {
  if (SslNotes* n = notes_for(ssl)) ++n->hellos;
  return SSL_CLIENT_HELLO_SUCCESS;
}

/// Client: offer the token as the external PSK.
int enroll_use_psk(SSL* ssl, const EVP_MD* md, const unsigned char** id, std::size_t* idlen, SSL_SESSION** sess) {
  *sess = nullptr;
  *id = nullptr;
  *idlen = 0;
  CtxData* d = ctx_data(ssl);
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kEnrollSuite);
  if (d == nullptr || cipher == nullptr) return 0;
  // After a HelloRetryRequest OpenSSL asks again with the negotiated hash; our
  // PSK only works with SHA-256, so offer nothing if that is not it.
  // Compare by type: OpenSSL 3 hands over a fetched EVP_MD, not the legacy
  // static one SSL_CIPHER_get_handshake_digest returns.
  const EVP_MD* ours = SSL_CIPHER_get_handshake_digest(cipher);
  if (md != nullptr && (ours == nullptr || EVP_MD_get_type(md) != EVP_MD_get_type(ours))) return 1;
  *sess = psk_session(ssl, d->token.secret);
  if (*sess == nullptr) return 0;
  *id = reinterpret_cast<const unsigned char*>(d->token.identity.data());
  *idlen = d->token.identity.size();
  return 1;
}

/// TLS 1.3 only, no tickets, no session cache: every connection runs a full
/// handshake (a resumed enrollment session would be a reusable token).
void harden(SSL_CTX* c) {
  SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
  // Peers already hold the fleet CA certificate: send the leaf alone.
  SSL_CTX_set_mode(c, SSL_MODE_NO_AUTO_CHAIN);
  SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(c, 0);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
}

/// A store trusting exactly `ca` (X509 strict checks on), set into `c`.
Result<void> trust_only(SSL_CTX* c, X509* ca) {
  StorePtr store(X509_STORE_new());
  if (!store || X509_STORE_add_cert(store.get(), ca) != 1 ||
      X509_STORE_set_flags(store.get(), X509_V_FLAG_X509_STRICT) != 1)
    return ossl_error(Errc::io_error, "cannot build the fleet trust store");
  SSL_CTX_set_cert_store(c, store.release());  // c owns it now
  return success();
}

Result<void> use_cert_and_key(SSL_CTX* c, std::string_view cert_pem, std::string_view key_pem, std::string_view what) {
  auto cert = parse_cert(cert_pem, what);
  if (!cert) return std::move(cert).error();
  auto key = parse_key(key_pem, what);
  if (!key) return std::move(key).error();
  if (X509_check_private_key(cert->get(), key->get()) != 1)
    return ossl_error(Errc::invalid_argument, std::string(what) + ": private key does not match the certificate");
  if (SSL_CTX_use_certificate(c, cert->get()) != 1 || SSL_CTX_use_PrivateKey(c, key->get()) != 1)
    return ossl_error(Errc::invalid_argument, std::string(what) + ": certificate or key refused");
  if (SSL_CTX_check_private_key(c) != 1)
    return ossl_error(Errc::invalid_argument, std::string(what) + ": private key does not match the certificate");
  return success();
}

template <class F>
Result<asio::ssl::context> build_context(asio::ssl::context::method m, F&& configure) {
  try {
    asio::ssl::context ctx(m);
    ERR_clear_error();
    Result<void> r = configure(ctx.native_handle());
    if (!r) return std::move(r).error();
    return Result<asio::ssl::context>(std::move(ctx));
  } catch (const std::exception& e) {
    return ossl_error(Errc::io_error, std::string("cannot create TLS context: ") + e.what());
  }
}

}  // namespace

// ================================================================ FleetCa
struct FleetCa::State {
  X509Ptr cert;
  PkeyPtr key;
  std::string cert_pem;
  std::string fingerprint;
};

FleetCa::FleetCa(std::unique_ptr<State> s) : s_(std::move(s)) {}
FleetCa::FleetCa(FleetCa&&) noexcept = default;
FleetCa& FleetCa::operator=(FleetCa&&) noexcept = default;
FleetCa::~FleetCa() = default;

const std::string& FleetCa::ca_cert_pem() const {
  FLEETDL_ASSERT(s_ != nullptr, "FleetCa used after being moved from");
  return s_->cert_pem;
}
const std::string& FleetCa::ca_fingerprint_sha256() const {
  FLEETDL_ASSERT(s_ != nullptr, "FleetCa used after being moved from");
  return s_->fingerprint;
}

Result<FleetCa> FleetCa::create(const std::filesystem::path& dir) {
  ERR_clear_error();
  const auto key_path = dir / "ca.key";
  const auto crt_path = dir / "ca.crt";
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (ec) return make_error(Errc::io_error, dir.string() + ": cannot create directory: " + ec.message());
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all, std::filesystem::perm_options::replace, ec);
    if (ec) return make_error(Errc::io_error, dir.string() + ": cannot set mode 0700: " + ec.message());
  } else if (!std::filesystem::is_directory(dir, ec)) {
    return make_error(Errc::invalid_argument, dir.string() + ": not a directory");
  }
  for (const auto& p : {key_path, crt_path}) {
    if (std::filesystem::symlink_status(p, ec).type() != std::filesystem::file_type::not_found)
      return make_error(Errc::invalid_argument, p.string() + ": a fleet CA already exists here; refusing to overwrite");
  }

  auto key = new_p256_key();
  if (!key) return std::move(key).error();
  std::array<unsigned char, 4> tag{};
  if (RAND_bytes(tag.data(), static_cast<int>(tag.size())) != 1) return ossl_error(Errc::io_error, "RAND_bytes failed");
  // A random tag in the CN keeps two fleets' CAs apart by name as well as by key.
  auto subject = name_with_cn("fleetdl fleet CA " + to_hex(tag.data(), tag.size()), "fleetdl");
  if (!subject) return std::move(subject).error();
  auto cert = build_cert(CertKind::ca, subject->get(), key->get(), nullptr, key->get(), 3653, nullptr);
  if (!cert) return std::move(cert).error();
  auto cert_pem = cert_to_pem(cert->get());
  if (!cert_pem) return std::move(cert_pem).error();
  auto key_pem = key_to_pem(key->get());
  if (!key_pem) return std::move(key_pem).error();
  auto fp = x509_fingerprint(cert->get());
  if (!fp) return std::move(fp).error();

  auto key_tmp = write_temp(key_path, *key_pem, 0600);
  OPENSSL_cleanse(key_pem->data(), key_pem->size());
  if (!key_tmp) return std::move(key_tmp).error();
  auto crt_tmp = write_temp(crt_path, *cert_pem, 0644);
  if (!crt_tmp) {
    ::unlink(key_tmp->c_str());
    return std::move(crt_tmp).error();
  }
  if (auto r = publish_no_replace(*key_tmp, key_path); !r) {
    ::unlink(key_tmp->c_str());
    ::unlink(crt_tmp->c_str());
    return std::move(r).error();
  }
  if (auto r = publish_no_replace(*crt_tmp, crt_path); !r) {
    ::unlink(key_path.c_str());  // ours: published a moment ago
    ::unlink(crt_tmp->c_str());
    return std::move(r).error();
  }
  fsync_dir(dir);

  auto s = std::make_unique<State>();
  s->cert = std::move(*cert);
  s->key = std::move(*key);
  s->cert_pem = std::move(*cert_pem);
  s->fingerprint = std::move(*fp);
  return FleetCa(std::move(s));
}

Result<FleetCa> FleetCa::load(const std::filesystem::path& dir) {
  ERR_clear_error();
  const auto key_path = dir / "ca.key";
  const auto crt_path = dir / "ca.crt";
  mode_t key_mode = 0;
  auto key_pem = read_small_file(key_path, kMaxCertPemBytes, &key_mode);
  if (!key_pem) return std::move(key_pem).error();
  if ((key_mode & 077) != 0) {
    OPENSSL_cleanse(key_pem->data(), key_pem->size());
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(key_mode & 07777));
    return make_error(Errc::invalid_argument, key_path.string() + ": mode " + buf +
                                                  " lets group or others read the CA key; expected 0600");
  }
  auto crt_pem = read_small_file(crt_path, kMaxCertPemBytes, nullptr);
  if (!crt_pem) return std::move(crt_pem).error();
  auto key = parse_key(*key_pem, key_path.string());
  OPENSSL_cleanse(key_pem->data(), key_pem->size());
  if (!key) return std::move(key).error();
  auto cert = parse_cert(*crt_pem, crt_path.string());
  if (!cert) return std::move(cert).error();

  X509* x = cert->get();
  if ((X509_get_extension_flags(x) & EXFLAG_CA) == 0 || X509_check_ca(x) != 1)
    return make_error(Errc::invalid_argument, crt_path.string() + ": not a CA certificate (basicConstraints CA:TRUE missing)");
  if ((X509_get_key_usage(x) & KU_KEY_CERT_SIGN) == 0)
    return make_error(Errc::invalid_argument, crt_path.string() + ": CA certificate lacks keyCertSign");
  if (X509_verify(x, X509_get0_pubkey(x)) != 1)
    return ossl_error(Errc::invalid_argument, crt_path.string() + ": not self-signed (signature does not verify with its own key)");
  if (X509_check_private_key(x, key->get()) != 1)
    return ossl_error(Errc::invalid_argument, key_path.string() + ": private key does not match " + crt_path.string());
  if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0)
    return make_error(Errc::invalid_argument, crt_path.string() + ": CA certificate has expired");
  auto fp = x509_fingerprint(x);
  if (!fp) return std::move(fp).error();

  auto s = std::make_unique<State>();
  s->cert = std::move(*cert);
  s->key = std::move(*key);
  s->cert_pem = std::move(*crt_pem);
  s->fingerprint = std::move(*fp);
  return FleetCa(std::move(s));
}

Result<std::string> FleetCa::issue_device_cert(std::string_view csr_pem, std::string_view device_name, int days) const {
  FLEETDL_ASSERT(s_ != nullptr, "FleetCa used after being moved from");
  ERR_clear_error();
  if (csr_pem.size() > kMaxCsrPemBytes)
    return make_error(Errc::limit_exceeded, "CSR for device " + shown(device_name) + ": " +
                                                std::to_string(csr_pem.size()) + " bytes exceeds " +
                                                std::to_string(kMaxCsrPemBytes));
  if (!is_valid_device_name(device_name))
    return make_error(Errc::invalid_argument, "device name " + shown(device_name) +
                                                  ": must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit");
  const std::string who = "CSR for device '" + std::string(device_name) + "'";
  if (days < 1 || days > kMaxCertDays)
    return make_error(Errc::invalid_argument, who + ": validity of " + std::to_string(days) + " days outside [1, 3650]");
  if (csr_pem.empty()) return make_error(Errc::invalid_argument, who + ": empty");

  auto bio = mem_bio(csr_pem);
  if (!bio) return std::move(bio).error();
  ReqPtr req(PEM_read_bio_X509_REQ(bio->get(), nullptr, no_password, nullptr));
  if (!req) return ossl_error(Errc::bad_magic, who + ": not a PEM certificate request");
  EVP_PKEY* pub = X509_REQ_get0_pubkey(req.get());
  if (pub == nullptr) return ossl_error(Errc::corrupt, who + ": no usable public key");
  if (X509_REQ_verify(req.get(), pub) != 1)
    return ossl_error(Errc::corrupt, who + ": signature does not verify (the requester does not hold the key)");

  switch (EVP_PKEY_get_base_id(pub)) {
    case EVP_PKEY_EC: {
      std::array<char, 64> group{};
      std::size_t len = 0;
      if (EVP_PKEY_get_group_name(pub, group.data(), group.size(), &len) != 1)
        return ossl_error(Errc::unsupported, who + ": EC key without a named curve");
      const std::string_view g(group.data(), len);
      if (g != "prime256v1" && g != "P-256" && g != "secp384r1" && g != "P-384")
        return make_error(Errc::unsupported, who + ": EC curve " + std::string(g) + " not accepted (P-256 or P-384)");
      break;
    }
    case EVP_PKEY_ED25519:
      break;
    case EVP_PKEY_RSA:
      if (EVP_PKEY_get_bits(pub) < 2048)
        return make_error(Errc::unsupported, who + ": RSA key of " + std::to_string(EVP_PKEY_get_bits(pub)) + " bits (< 2048)");
      break;
    default:
      return make_error(Errc::unsupported, who + ": key type not accepted (EC P-256/P-384, Ed25519, RSA >= 2048)");
  }

  auto subject = name_with_cn(device_name, "fleetdl device");
  if (!subject) return std::move(subject).error();
  auto cert = build_cert(CertKind::device, subject->get(), pub, s_->cert.get(), s_->key.get(), days, nullptr);
  if (!cert) return std::move(cert).error();
  return cert_to_pem(cert->get());
}

Result<CertAndKey> FleetCa::issue_server_cert(const std::vector<std::string>& names, int days) const {
  FLEETDL_ASSERT(s_ != nullptr, "FleetCa used after being moved from");
  ERR_clear_error();
  if (days < 1 || days > kMaxCertDays)
    return make_error(Errc::invalid_argument, "server certificate: validity of " + std::to_string(days) + " days outside [1, 3650]");
  GenNamesPtr san(sk_GENERAL_NAME_new_null());
  if (!san) return ossl_error(Errc::io_error, "sk_GENERAL_NAME_new_null failed");
  std::vector<std::string> all{"127.0.0.1"};
  for (const auto& n : names)
    if (n != "127.0.0.1") all.push_back(n);
  for (const auto& n : all) {
    GenNamePtr gn(GENERAL_NAME_new());
    if (!gn) return ossl_error(Errc::io_error, "GENERAL_NAME_new failed");
    if (is_ip_literal(n)) {
      OctetPtr ip(a2i_IPADDRESS(n.c_str()));
      if (!ip) return ossl_error(Errc::invalid_argument, "server certificate: bad IP address " + shown(n));
      GENERAL_NAME_set0_value(gn.get(), GEN_IPADD, ip.release());
    } else if (is_valid_dns_name(n)) {
      Ia5Ptr dns(ASN1_IA5STRING_new());
      if (!dns || ASN1_STRING_set(dns.get(), n.data(), static_cast<int>(n.size())) != 1)
        return ossl_error(Errc::io_error, "ASN1_STRING_set failed");
      GENERAL_NAME_set0_value(gn.get(), GEN_DNS, dns.release());
    } else {
      return make_error(Errc::invalid_argument, "server certificate: " + shown(n) + " is neither an IP address nor a DNS name");
    }
    if (sk_GENERAL_NAME_push(san.get(), gn.get()) <= 0) return ossl_error(Errc::io_error, "sk_GENERAL_NAME_push failed");
    gn.release();
  }

  auto key = new_p256_key();
  if (!key) return std::move(key).error();
  // The CN is informational (clients match the SAN); X.520 caps it at 64 characters.
  const std::string cn = names.empty() || names.front().size() > 64 ? std::string("fleetdl-orchestrator") : names.front();
  auto subject = name_with_cn(cn, "fleetdl orchestrator");
  if (!subject) return std::move(subject).error();
  auto cert = build_cert(CertKind::server, subject->get(), key->get(), s_->cert.get(), s_->key.get(), days, san.get());
  if (!cert) return std::move(cert).error();
  auto cert_pem = cert_to_pem(cert->get());
  if (!cert_pem) return std::move(cert_pem).error();
  auto key_pem = key_to_pem(key->get());
  if (!key_pem) return std::move(key_pem).error();
  return CertAndKey{std::move(*cert_pem), std::move(*key_pem)};
}

// ================================================================ certificates
bool is_valid_device_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxDeviceNameBytes) return false;
  const char c0 = name.front();
  if (!((c0 >= 'a' && c0 <= 'z') || (c0 >= 'A' && c0 <= 'Z') || (c0 >= '0' && c0 <= '9'))) return false;
  for (char c : name)
    if (!is_name_char(c)) return false;
  return true;
}

Result<KeyAndCsr> make_key_and_csr(std::string_view device_name) {
  ERR_clear_error();
  if (!is_valid_device_name(device_name))
    return make_error(Errc::invalid_argument, "device name " + shown(device_name) +
                                                  ": must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit");
  auto key = new_p256_key();
  if (!key) return std::move(key).error();
  ReqPtr req(X509_REQ_new());
  if (!req) return ossl_error(Errc::io_error, "X509_REQ_new failed");
  auto subject = name_with_cn(device_name, nullptr);
  if (!subject) return std::move(subject).error();
  if (X509_REQ_set_version(req.get(), 0) != 1 || X509_REQ_set_subject_name(req.get(), subject->get()) != 1 ||
      X509_REQ_set_pubkey(req.get(), key->get()) != 1 || X509_REQ_sign(req.get(), key->get(), EVP_sha256()) <= 0)
    return ossl_error(Errc::io_error, "device '" + std::string(device_name) + "': cannot build the CSR");
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509_REQ(bio.get(), req.get()) != 1)
    return ossl_error(Errc::io_error, "PEM_write_bio_X509_REQ failed");
  auto key_pem = key_to_pem(key->get());
  if (!key_pem) return std::move(key_pem).error();
  return KeyAndCsr{std::move(*key_pem), bio_text(bio.get())};
}

Result<std::string> fingerprint_sha256(std::string_view cert_pem) {
  ERR_clear_error();
  auto x = parse_cert(cert_pem, "certificate");
  if (!x) return std::move(x).error();
  return x509_fingerprint(x->get());
}

Result<std::string> cert_common_name(std::string_view cert_pem) {
  ERR_clear_error();
  auto x = parse_cert(cert_pem, "certificate");
  if (!x) return std::move(x).error();
  return x509_common_name(x->get());
}

Result<std::string> csr_common_name(std::string_view csr_pem) {
  ERR_clear_error();
  if (csr_pem.size() > kMaxCsrPemBytes)
    return make_error(Errc::limit_exceeded, "CSR: " + std::to_string(csr_pem.size()) + " bytes exceeds " +
                                                std::to_string(kMaxCsrPemBytes));
  auto bio = mem_bio(csr_pem);
  if (!bio) return std::move(bio).error();
  ReqPtr req(PEM_read_bio_X509_REQ(bio->get(), nullptr, no_password, nullptr));
  if (!req) return ossl_error(Errc::bad_magic, "CSR: not a PEM certificate request");
  EVP_PKEY* pub = X509_REQ_get0_pubkey(req.get());
  if (pub == nullptr || X509_REQ_verify(req.get(), pub) != 1)
    return ossl_error(Errc::corrupt, "CSR: signature does not verify (the requester does not hold the key)");
  auto cn = name_common_name(X509_REQ_get_subject_name(req.get()));
  if (!cn) return make_error(cn.error().code, "CSR: " + cn.error().message);
  if (!is_valid_device_name(*cn))
    return make_error(Errc::invalid_argument, "CSR: subject CN " + shown(*cn) + " is not a valid device name");
  return cn;
}

Result<PeerIdentity> verify_device_cert(std::string_view ca_cert_pem, std::string_view cert_pem) {
  ERR_clear_error();
  auto ca = parse_cert(ca_cert_pem, "CA certificate");
  if (!ca) return std::move(ca).error();
  auto leaf = parse_cert(cert_pem, "device certificate");
  if (!leaf) return std::move(leaf).error();
  StorePtr store(X509_STORE_new());
  StoreCtxPtr vctx(X509_STORE_CTX_new());
  if (!store || !vctx || X509_STORE_add_cert(store.get(), ca->get()) != 1 ||
      X509_STORE_set_flags(store.get(), X509_V_FLAG_X509_STRICT) != 1 ||
      X509_STORE_CTX_init(vctx.get(), store.get(), leaf->get(), nullptr) != 1 ||
      X509_STORE_CTX_set_purpose(vctx.get(), X509_PURPOSE_SSL_CLIENT) != 1)
    return ossl_error(Errc::io_error, "cannot set up certificate verification");
  if (X509_verify_cert(vctx.get()) != 1) {
    ERR_clear_error();
    return make_error(Errc::invalid_argument,
                      verify_failure_text(X509_STORE_CTX_get_error(vctx.get()), leaf->get(), "device certificate"));
  }
  auto cn = x509_common_name(leaf->get());
  if (!cn) return std::move(cn).error();
  auto fp = x509_fingerprint(leaf->get());
  if (!fp) return std::move(fp).error();
  return PeerIdentity{std::move(*cn), std::move(*fp)};
}

// ================================================================ tokens
Result<EnrollmentToken> generate_token() {
  std::array<unsigned char, 8> id{};
  EnrollmentToken t;
  t.secret.resize(kTokenSecretBytes);
  if (RAND_bytes(id.data(), static_cast<int>(id.size())) != 1 ||
      RAND_bytes(t.secret.data(), static_cast<int>(t.secret.size())) != 1)
    return ossl_error(Errc::io_error, "RAND_bytes failed");
  t.identity = "tok-" + to_hex(id.data(), id.size());
  return t;
}

std::string encode_token(const EnrollmentToken& token) {
  return token.identity + ":" + to_hex(token.secret.data(), token.secret.size());
}

Result<EnrollmentToken> decode_token(std::string_view text) {
  const auto colon = text.find(':');
  if (colon == std::string_view::npos)
    return make_error(Errc::invalid_argument, "enrollment token: expected identity:hexsecret");
  const std::string_view id = text.substr(0, colon);
  const std::string_view hex = text.substr(colon + 1);
  if (!is_valid_token_identity(id))
    return make_error(Errc::invalid_argument, "enrollment token: identity " + shown(id) + " must be 1-64 characters of A-Z a-z 0-9 . _ -");
  if (hex.size() % 2 != 0 || hex.size() < 32 || hex.size() > 128)
    return make_error(Errc::invalid_argument, "enrollment token '" + std::string(id) + "': secret must be 16-64 bytes of hex");
  EnrollmentToken t;
  t.identity.assign(id);
  t.secret.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = hex_value(hex[i]);
    const int lo = hex_value(hex[i + 1]);
    if (hi < 0 || lo < 0) {
      OPENSSL_cleanse(t.secret.data(), t.secret.size());
      return make_error(Errc::invalid_argument, "enrollment token '" + std::string(id) + "': secret is not hex");
    }
    t.secret.push_back(static_cast<std::uint8_t>(hi * 16 + lo));
  }
  return t;
}

// ================================================================ TLS contexts
Result<asio::ssl::context> make_fleet_server_context(const FleetCa& ca, const CertAndKey& server) {
  ERR_clear_error();
  auto ca_x = parse_cert(ca.ca_cert_pem(), "fleet CA certificate");
  if (!ca_x) return std::move(ca_x).error();
  X509* ca_cert = ca_x->get();
  return build_context(asio::ssl::context::tls_server, [&](SSL_CTX* c) -> Result<void> {
    harden(c);
    FLEETDL_TRY(use_cert_and_key(c, server.cert_pem, server.key_pem, "fleet server certificate"));
    FLEETDL_TRY(trust_only(c, ca_cert));
    // Name the fleet CA in the CertificateRequest so agents pick the right certificate.
    if (SSL_CTX_add_client_CA(c, ca_cert) != 1) return ossl_error(Errc::io_error, "SSL_CTX_add_client_CA failed");
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, fleet_verify_cb);
    SSL_CTX_set_verify_depth(c, 1);  // device certificate + the fleet CA, nothing between
    if (X509_VERIFY_PARAM_set_purpose(SSL_CTX_get0_param(c), X509_PURPOSE_SSL_CLIENT) != 1)
      return ossl_error(Errc::io_error, "cannot require clientAuth");
    auto d = std::make_unique<CtxData>();
    d->channel = Channel::fleet_server;
    return attach(c, std::move(d));
  });
}

Result<asio::ssl::context> make_fleet_client_context(std::string_view ca_cert_pem, std::string_view device_cert_pem,
                                                     std::string_view device_key_pem, std::string_view expected_server) {
  ERR_clear_error();
  auto ca = parse_cert(ca_cert_pem, "fleet CA certificate");
  if (!ca) return std::move(ca).error();
  const std::string server(expected_server);
  const bool ip = is_ip_literal(server);
  if (!ip && !is_valid_dns_name(server))
    return make_error(Errc::invalid_argument, "expected server " + shown(server) + ": neither an IP address nor a DNS name");
  return build_context(asio::ssl::context::tls_client, [&](SSL_CTX* c) -> Result<void> {
    harden(c);
    FLEETDL_TRY(use_cert_and_key(c, device_cert_pem, device_key_pem, "device certificate"));
    FLEETDL_TRY(trust_only(c, ca->get()));
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, fleet_verify_cb);
    SSL_CTX_set_verify_depth(c, 1);
    X509_VERIFY_PARAM* param = SSL_CTX_get0_param(c);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, server.c_str())
                      : X509_VERIFY_PARAM_set1_host(param, server.c_str(), server.size());
    if (ok != 1 || X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER) != 1)
      return ossl_error(Errc::invalid_argument, "expected server " + shown(server) + ": cannot be checked");
    auto d = std::make_unique<CtxData>();
    d->channel = Channel::fleet_client;
    return attach(c, std::move(d));
  });
}

Result<asio::ssl::context> make_enroll_server_context(PskLookup lookup) {
  if (!lookup) return make_error(Errc::invalid_argument, "enrollment listener: no token lookup given");
  return build_context(asio::ssl::context::tls_server, [&](SSL_CTX* c) -> Result<void> {
    harden(c);
    SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
    if (SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256") != 1)
      return ossl_error(Errc::unsupported, "TLS_AES_128_GCM_SHA256 unavailable");
    // No certificate is loaded, so a ClientHello without an accepted PSK has
    // nothing to authenticate with and the handshake fails.
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_psk_find_session_callback(c, enroll_find_psk);
    SSL_CTX_set_client_hello_cb(c, enroll_count_hello, nullptr);
    auto d = std::make_unique<CtxData>();
    d->channel = Channel::enroll_server;
    d->lookup = std::move(lookup);
    return attach(c, std::move(d));
  });
}

Result<asio::ssl::context> make_enroll_client_context(const EnrollmentToken& token) {
  if (!is_valid_token_identity(token.identity))
    return make_error(Errc::invalid_argument, "enrollment token: identity " + shown(token.identity) + " is malformed");
  if (token.secret.size() < 16 || token.secret.size() > 64)
    return make_error(Errc::invalid_argument, "enrollment token '" + token.identity + "': secret must be 16-64 bytes");
  return build_context(asio::ssl::context::tls_client, [&](SSL_CTX* c) -> Result<void> {
    harden(c);
    SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
    if (SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256") != 1)
      return ossl_error(Errc::unsupported, "TLS_AES_128_GCM_SHA256 unavailable");
    // An empty trust store and verify_peer: if the server ever answered with a
    // certificate instead of accepting the PSK, the agent refuses it.
    StorePtr empty(X509_STORE_new());
    if (!empty) return ossl_error(Errc::io_error, "X509_STORE_new failed");
    SSL_CTX_set_cert_store(c, empty.release());
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_psk_use_session_callback(c, enroll_use_psk);
    auto d = std::make_unique<CtxData>();
    d->channel = Channel::enroll_client;
    d->token = token;
    return attach(c, std::move(d));
  });
}

// ================================================================ after a handshake
Result<PeerIdentity> verified_peer(SSL* ssl) {
  if (ssl == nullptr) return make_error(Errc::invalid_argument, "verified_peer: no TLS connection");
  const CtxData* d = ctx_data(ssl);
  if (d == nullptr || (d->channel != Channel::fleet_server && d->channel != Channel::fleet_client))
    return make_error(Errc::invalid_argument, "verified_peer: not a fleet TLS connection");
  if (SSL_is_init_finished(ssl) != 1) return make_error(Errc::invalid_argument, "verified_peer: handshake not finished");
  X509* peer = SSL_get0_peer_certificate(ssl);
  if (peer == nullptr) return make_error(Errc::invalid_argument, "peer presented no certificate");
  const long vr = SSL_get_verify_result(ssl);
  if (vr != X509_V_OK)
    return make_error(Errc::invalid_argument, verify_failure_text(static_cast<int>(vr), peer, "peer certificate"));
  ERR_clear_error();
  auto cn = x509_common_name(peer);
  if (!cn) return std::move(cn).error();
  if (d->channel == Channel::fleet_server && !is_valid_device_name(*cn))
    return make_error(Errc::invalid_argument, "peer certificate CN " + shown(*cn) + " is not a valid device name");
  auto fp = x509_fingerprint(peer);
  if (!fp) return std::move(fp).error();
  return PeerIdentity{std::move(*cn), std::move(*fp)};
}

Result<std::string> enrollment_identity(SSL* ssl) {
  const CtxData* d = ctx_data(ssl);
  if (d == nullptr || d->channel != Channel::enroll_server)
    return make_error(Errc::invalid_argument, "enrollment_identity: not an enrollment listener connection");
  const SslNotes* n = notes_of(ssl);
  if (SSL_is_init_finished(ssl) != 1 || n == nullptr || !n->psk_found || SSL_session_reused(ssl) != 1)
    return make_error(Errc::not_found, "enrollment_identity: no enrollment token was accepted on this connection");
  return n->token_identity;
}

Error handshake_error(SSL* ssl, const std::error_code& ec, std::string_view peer) {
  const std::string prefix = std::string(peer) + ": TLS handshake failed: ";
  const CtxData* d = ctx_data(ssl);
  const SslNotes* n = notes_of(ssl);
  const bool tls_error = ec.category() == asio::error::get_ssl_category();
  const int reason = tls_error ? ERR_GET_REASON(static_cast<unsigned long>(static_cast<unsigned int>(ec.value()))) : 0;
  if (d != nullptr) {
    switch (d->channel) {
      case Channel::enroll_server:
        if (n == nullptr || !n->psk_offered)
          return make_error(Errc::invalid_argument, prefix + "enrollment token rejected: the agent offered none");
        if (n->psk_found && n->psk_hello < n->hellos)
          return make_error(Errc::invalid_argument, prefix + "enrollment token " + shown(n->token_identity) +
                                                        " not offered again after a HelloRetryRequest");
        if (n->psk_found)
          return make_error(Errc::invalid_argument, prefix + "enrollment token " + shown(n->token_identity) +
                                                        " rejected (wrong secret)");
        return make_error(Errc::invalid_argument, prefix + "enrollment token " + shown(n->token_identity) +
                                                      " rejected (" + n->psk_rejection + ")");
      case Channel::enroll_client:
        if (tls_error)
          return make_error(Errc::invalid_argument, prefix + "enrollment token '" + d->token.identity +
                                                        "' rejected by the orchestrator (" + ec.message() + ")");
        break;
      case Channel::fleet_server:
      case Channel::fleet_client:
        if (n != nullptr && !n->verify_failure.empty())
          return make_error(Errc::invalid_argument, prefix + n->verify_failure);
        if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
          return make_error(Errc::invalid_argument, prefix + "peer presented no certificate");
        if (reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA || reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
            reason == SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE || reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN ||
            reason == SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED || reason == SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED)
          return make_error(Errc::invalid_argument, prefix + "the peer rejected our certificate (" + ec.message() + ")");
        if (reason == SSL_R_UNSUPPORTED_PROTOCOL || reason == SSL_R_WRONG_VERSION_NUMBER ||
            reason == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION || reason == SSL_R_UNSUPPORTED_SSL_VERSION)
          return make_error(Errc::unsupported, prefix + "peer does not speak TLS 1.3 (" + ec.message() + ")");
        break;
    }
  }
  return make_error(tls_error ? Errc::invalid_argument : Errc::io_error, prefix + ec.message());
}

}  // namespace fleetdl::core
