package config

import (
	"reflect"
	"strings"
)

// Key is one key of the config file, for the reference.
type Key struct {
	Path string // listeners[].tls.certificates[].cert
	Type string // string, int, bool, list, map, duration...
}

// Keys lists every key the config file takes, depth first in the order
// the sections are declared, from the decoder's own types, so the
// reference cannot name a key the decoder does not take or miss one.
func Keys() []Key {
	var out []Key
	walkKeys(reflect.TypeOf(Raw{}), "", &out)
	return out
}

func walkKeys(t reflect.Type, prefix string, out *[]Key) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		path := join(prefix, tag)
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			*out = append(*out, Key{path, "section"})
			walkKeys(ft, path, out)
		case ft.Kind() == reflect.Slice && elem(ft).Kind() == reflect.Struct:
			*out = append(*out, Key{path, "list"})
			walkKeys(elem(ft), path+"[]", out)
		case ft.Kind() == reflect.Slice:
			*out = append(*out, Key{path, "list of " + elem(ft).Kind().String()})
		case ft.Kind() == reflect.Map:
			*out = append(*out, Key{path, "map"})
		default:
			*out = append(*out, Key{path, ft.Kind().String()})
		}
	}
}

func elem(t reflect.Type) reflect.Type {
	t = t.Elem()
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// AttributeDefaults are the target group attributes and their defaults, NLB's
// keys verbatim.
func AttributeDefaults() map[string]string {
	out := make(map[string]string, len(defaultAttributes))
	for k, v := range defaultAttributes {
		out[k] = v
	}
	return out
}
