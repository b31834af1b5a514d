package llamagrid

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
)

// TestInvalidTLSConfig checks, without a worker, that TLS settings that cannot work are refused
// before any connection is made.
func TestInvalidTLSConfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.pem")
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		cfg  TLSConfig
		want string
	}{
		"CA twice":          {TLSConfig{CAFile: notPEM, CAPEM: []byte("x")}, "both as a file and as bytes"},
		"CA file missing":   {TLSConfig{CAFile: missing}, "missing.pem"},
		"CA not PEM":        {TLSConfig{CAFile: notPEM}, "no PEM certificate"},
		"CA bytes empty":    {TLSConfig{CAPEM: []byte{}}, "no PEM certificate"},
		"cert without key":  {TLSConfig{CertPEM: []byte("x")}, "needs its key"},
		"key without cert":  {TLSConfig{KeyFile: notPEM}, "needs its key"},
		"cert and key junk": {TLSConfig{CertPEM: []byte("x"), KeyPEM: []byte("y")}, "client certificate and key"},
	} {
		_, err := TLSCredentials(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, tc.want)
		}
	}
	if _, err := TLSCredentials(TLSConfig{}); err != nil {
		t.Errorf("the zero TLSConfig (system roots): %v", err)
	}
}

// TestTokenOverPlaintext checks that a token may be used without TLS (a worker on loopback).
func TestTokenOverPlaintext(t *testing.T) {
	conn, err := grpc.NewClient("127.0.0.1:1", append(DefaultDialOptions(), WithToken("secret"))...)
	if err != nil {
		t.Fatalf("a token over plaintext was refused: %v", err)
	}
	conn.Close()
}

func TestTokenMetadata(t *testing.T) {
	for _, good := range []string{"abc.DEF-123", "a~b+c/d_e==", strings.Repeat("x", MaxTokenChars)} {
		md, err := TokenCredentials(good).GetRequestMetadata(context.Background())
		if err != nil || md["authorization"] != "Bearer "+good {
			t.Errorf("token %.20q: got %v, %v", good, md, err)
		}
	}
	bads := []string{"", "two words", "line\nbreak", "caf\u00e9", "a=b", "semi;colon", strings.Repeat("x", MaxTokenChars+1)}
	for _, bad := range bads {
		if _, err := TokenCredentials(bad).GetRequestMetadata(context.Background()); err == nil {
			t.Errorf("token %.20q was accepted", bad)
		}
	}
}
