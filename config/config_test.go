package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// parsers parse args with the injection flags registered on a flag set of each flag package:
// Register (the server) and RegisterPFlags (the kubectl plugin) must load alike.
var parsers = map[string]func(args []string) (*Flags, error){
	"flag": func(args []string) (*Flags, error) {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		f := Register(fs)
		return f, fs.Parse(args)
	},
	"pflag": func(args []string) (*Flags, error) {
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		f := RegisterPFlags(fs)
		return f, fs.Parse(args)
	},
}

func TestLoadPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte("memkindImage: registry.example/memkind:1\nsizeFactor: 3\nallowedStorageClasses: [a, b]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want func(*patch.Config)
	}{
		{"defaults", nil, func(*patch.Config) {}},
		{"file", []string{"--config", file}, func(c *patch.Config) {
			c.MemkindImage, c.SizeFactor, c.AllowedStorageClasses = "registry.example/memkind:1", 3, []string{"a", "b"}
		}},
		{"flag overrides file", []string{"--config", file, "--size-factor", "1.5", "--kmem-node-selector", "x/kmem=true,zone=a"}, func(c *patch.Config) {
			c.MemkindImage, c.SizeFactor, c.AllowedStorageClasses = "registry.example/memkind:1", 1.5, []string{"a", "b"}
			c.KMEMNodeSelector = map[string]string{"x/kmem": "true", "zone": "a"}
		}},
	}
	for _, tc := range cases {
		for pkg, parse := range parsers {
			t.Run(tc.name+"/"+pkg, func(t *testing.T) {
				f, err := parse(tc.args)
				if err != nil {
					t.Fatal(err)
				}
				got, err := f.Load()
				if err != nil {
					t.Fatal(err)
				}
				want := patch.DefaultConfig()
				tc.want(&want)
				if !reflect.DeepEqual(*got, want) {
					t.Errorf("Load() = %+v, want %+v", *got, want)
				}
			})
		}
	}
}

func TestLoadRejects(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("memkindImg: typo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--size-factor", "0"}, "sizeFactor 0"},
		{[]string{"--kmem-node-selector", "novalue"}, `entry "novalue" is not key=value`},
		{[]string{"--config", bad}, `unknown field "memkindImg"`},
		{[]string{"--config", "/nonexistent.yaml"}, "read config file"},
	}
	for _, tc := range cases {
		for pkg, parse := range parsers {
			f, err := parse(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Load(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s %v: Load() error = %v, want %q", pkg, tc.args, err, tc.want)
			}
		}
	}
}
