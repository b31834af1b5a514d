package llamagrid

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"regexp"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// TLSConfig describes a TLS connection to a worker. The zero value is TLS that trusts the
// system's root certificates and presents no client certificate.
//
// Each PEM input comes either from a file or from bytes, not both.
type TLSConfig struct {
	// CAFile or CAPEM holds the PEM certificates of the authorities that sign the worker's
	// certificate. With neither, the system's roots are trusted.
	CAFile string
	CAPEM  []byte
	// CertFile and KeyFile, or CertPEM and KeyPEM, hold the client certificate chain and its
	// private key, for a worker that requires client certificates (mTLS). Give both or neither.
	CertFile, KeyFile string
	CertPEM, KeyPEM   []byte
	// ServerName, when set, is the name checked against the worker's certificate instead of the
	// host of the dial target.
	ServerName string
}

// TLSCredentials reads the files cfg names and returns transport credentials for TLS 1.2 or
// later, to pass to Dial as grpc.WithTransportCredentials(creds):
//
//	creds, err := llamagrid.TLSCredentials(llamagrid.TLSConfig{
//		CAFile: "ca.pem", CertFile: "client.pem", KeyFile: "client.key",
//	})
//	if err != nil { return err }
//	client, err := llamagrid.Dial(ctx, "worker.internal:50051",
//		grpc.WithTransportCredentials(creds), llamagrid.WithToken(token))
func TLSCredentials(cfg TLSConfig) (credentials.TransportCredentials, error) {
	conf, err := cfg.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("llamagrid: TLS: %w", err)
	}
	return credentials.NewTLS(conf), nil
}

func (cfg TLSConfig) tlsConfig() (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.ServerName}
	caPEM, err := pemInput("CA", cfg.CAFile, cfg.CAPEM)
	if err != nil {
		return nil, err
	}
	if caPEM != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("the CA input holds no PEM certificate")
		}
		conf.RootCAs = pool
	}
	certPEM, err := pemInput("client certificate", cfg.CertFile, cfg.CertPEM)
	if err != nil {
		return nil, err
	}
	keyPEM, err := pemInput("client key", cfg.KeyFile, cfg.KeyPEM)
	if err != nil {
		return nil, err
	}
	if (certPEM == nil) != (keyPEM == nil) {
		return nil, errors.New("a client certificate needs its key, and a key its certificate")
	}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("client certificate and key: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf, nil
}

// pemInput returns the bytes of a PEM input given as a file or as bytes, or nil when neither is
// set.
func pemInput(what, file string, data []byte) ([]byte, error) {
	switch {
	case file != "" && data != nil:
		return nil, fmt.Errorf("%s given both as a file and as bytes", what)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return b, nil
	case data != nil:
		return data, nil
	}
	return nil, nil
}

// MaxTokenChars is the longest token sent (gRPC's default limit on a call's metadata is 8 KiB).
const MaxTokenChars = 4096

// WithToken returns a dial option that sends token as "authorization: Bearer <token>" with every
// call, for a worker started with a token (LLAMAGRID_WORKER_TOKEN or --token-file). It is sent
// over plaintext connections too, where anyone on the network path can read it: beyond loopback,
// use it with TLS. A token is an RFC 6750 bearer token (letters, digits and -._~+/, optionally
// ending in =, at most MaxTokenChars characters); with any other, every call fails with
// UNAUTHENTICATED before anything is sent.
func WithToken(token string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(TokenCredentials(token))
}

// TokenCredentials is WithToken's credentials, for callers that attach them to single calls
// (grpc.PerRPCCredentials) or build their own connection.
func TokenCredentials(token string) credentials.PerRPCCredentials {
	return bearerToken(token)
}

type bearerToken string

// tokenPattern is RFC 6750's b64token.
var tokenPattern = regexp.MustCompile(`^[A-Za-z0-9\-._~+/]+=*$`)

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	switch {
	case t == "":
		return nil, errors.New("llamagrid: the token is empty")
	case len(t) > MaxTokenChars:
		return nil, fmt.Errorf("llamagrid: the token is longer than %d characters", MaxTokenChars)
	case !tokenPattern.MatchString(string(t)):
		return nil, errors.New("llamagrid: the token must be letters, digits and -._~+/ only, " +
			"optionally ending in = (an RFC 6750 bearer token)")
	}
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity is false: workers on loopback or a private network may take a token
// without TLS.
func (bearerToken) RequireTransportSecurity() bool { return false }
