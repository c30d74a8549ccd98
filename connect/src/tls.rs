//! TLS for the connections sluice opens (PostgreSQL and RabbitMQ): rustls client settings from
//! the PEM files a connection URL names, with one verifier per level of checking, and failures
//! explained in terms of the URL parameter that fixes them.
//!
//! The files are read each time a connection is opened, so a renewed certificate is picked up
//! on the next reconnect without a restart.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only: any certificate is accepted (PostgreSQL's `require` without a CA file).
    Nothing,
    /// The certificate must chain to a trusted CA, whatever name it carries (`verify-ca`).
    Chain,
    /// The chain, and the certificate must name the host connected to (`verify-full`).
    Full,
}

/// A PEM file named by a URL parameter; errors about it name that parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFile {
    /// The URL parameter that names the file (`sslrootcert`, `cacertfile`).
    pub param: &'static str,
    /// The file.
    pub path: PathBuf,
}

impl PemFile {
    /// `path`, as named by `param`.
    pub fn new(param: &'static str, path: impl Into<PathBuf>) -> Self {
        PemFile {
            param,
            path: path.into(),
        }
    }

    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        self.readable()?;
        let certs = CertificateDer::pem_file_iter(&self.path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| format!("{self}: not a PEM certificate file ({e})"))?;
        if certs.is_empty() {
            return Err(format!("{self}: holds no PEM certificate"));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, String> {
        self.readable()?;
        PrivateKeyDer::from_pem_file(&self.path)
            .map_err(|e| format!("{self}: holds no PEM private key ({e})"))
    }

    /// Fails, naming the parameter, when the file cannot be read.
    pub fn readable(&self) -> Result<(), String> {
        std::fs::File::open(&self.path)
            .map(drop)
            .map_err(|e| format!("{self}: cannot read the file: {e}"))
    }
}

impl fmt::Display for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.param, self.path.display())
    }
}

/// What a TLS client needs: how far to verify, whom to trust, and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// How much of the server's certificate is checked.
    pub verify: Verify,
    /// The CAs trusted to sign the server's certificate; the Mozilla roots when `None`.
    pub ca: Option<PemFile>,
    /// The client's certificate chain and its key, for servers that ask for one.
    pub identity: Option<(PemFile, PemFile)>,
}

impl TlsOptions {
    /// Reads the files and builds the rustls client settings; the error names the parameter
    /// whose file is missing or unusable.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in ca.certificates()? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{ca}: not a usable CA certificate ({e})"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("no TLS protocol version available: {e}"))?;
        let builder = match self.verify {
            Verify::Full => builder.with_root_certificates(roots),
            Verify::Chain | Verify::Nothing => {
                let chain = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| format!("cannot build a certificate verifier: {e}"))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lenient {
                        chain,
                        provider,
                        check_chain: self.verify == Verify::Chain,
                    }))
            }
        };
        match &self.identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(cert.certificates()?, key.private_key()?)
                .map_err(|e| format!("{cert} and {key} do not make a client identity: {e}")),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The process's rustls crypto provider, installing aws-lc-rs as the default when none is
/// (clients that build their settings with `ClientConfig::builder()`, such as the replication
/// connection's, need a default, and two providers are compiled in).
pub fn provider() -> Arc<CryptoProvider> {
    if let Some(provider) = CryptoProvider::get_default() {
        return Arc::clone(provider);
    }
    // Another thread may install one first; either way there is a default afterwards.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    CryptoProvider::get_default().map_or_else(
        || Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        Arc::clone,
    )
}

/// `verify-ca` (the chain, not the name) and `require` (nothing): still checks that the
/// server holds the key of the certificate it shows.
#[derive(Debug)]
struct Lenient {
    chain: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    check_chain: bool,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The remedy for a failed TLS handshake, when the failure is about the server's certificate
/// (which URL parameter to change) or the server did not speak TLS at all. `ca_param` names the CA file parameter of the URL.
pub fn remedy(error: &(dyn std::error::Error + 'static), ca_param: &str) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(mut e) = cause {
        // An I/O error hides the error it wraps from `source()`.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            e = inner;
        }
        if let Some(rustls::Error::InvalidCertificate(problem)) = e.downcast_ref::<rustls::Error>()
        {
            return Some(match problem {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                    "the server's certificate is not signed by a trusted CA: set {ca_param} to the CA that signed it"
                ),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "the server's certificate does not name the host in the URL: connect by a name the certificate carries".to_owned()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server's certificate has expired: renew it on the server".to_owned()
                }
                other => format!("the server's certificate is refused ({other:?})"),
            });
        }
        if let Some(rustls::Error::InvalidMessage(_)) = e.downcast_ref::<rustls::Error>() {
            return Some(
                "the server did not answer in TLS: the port is likely a plain one; connect to the server's TLS port, or use a plain URL".to_owned(),
            );
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of this test's own holding `text`.
    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn refusal(options: TlsOptions) -> String {
        options.client_config().map(drop).unwrap_err()
    }

    #[test]
    fn unusable_files_are_refused_naming_their_parameter() {
        let garbage = file("garbage.pem", "not a certificate\n");
        let with_ca = |path: &PathBuf| TlsOptions {
            verify: Verify::Full,
            ca: Some(PemFile::new("sslrootcert", path)),
            identity: None,
        };
        let missing = PathBuf::from("/nonexistent/ca.pem");
        let error = refusal(with_ca(&missing));
        assert!(
            error.starts_with("sslrootcert=/nonexistent/ca.pem: cannot read the file"),
            "{error}"
        );
        let error = refusal(with_ca(&garbage));
        assert!(
            error
                == format!(
                    "sslrootcert={}: holds no PEM certificate",
                    garbage.display()
                ),
            "{error}"
        );
        // A directory opens but does not read.
        let dir = garbage.parent().unwrap().to_owned();
        let error = refusal(with_ca(&dir));
        assert!(
            error.starts_with(&format!("sslrootcert={}:", dir.display())),
            "{error}"
        );
        let error = refusal(TlsOptions {
            verify: Verify::Nothing,
            ca: None,
            identity: Some((
                PemFile::new("certfile", &garbage),
                PemFile::new("keyfile", &garbage),
            )),
        });
        assert!(
            error.starts_with(&format!(
                "certfile={}: holds no PEM certificate",
                garbage.display()
            )),
            "{error}"
        );
    }
}
